"""The fused convolutions of the default model, one by one: oneDNN's grouped convolution against what
`training.widen` runs instead for a 1x1 layer (a batched product), forward and backward, at one torch thread.

For each convolution of `test_resnet` at its 16 px input (the shapes of K = 8 slots over a batch of 32), the
milliseconds of a forward and backward pass of each form, their ratio, and that the two agree.

    python benchmarks/fuse_layers.py [--slots 8] [--batch 32] [--repeats 20] [--out FILE.json]
    python benchmarks/fuse_layers.py --smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from lrtune.training.widen import widen


def shapes(image_size: int) -> list[tuple[str, nn.Conv2d, tuple[int, ...]]]:
    """Each convolution of the default model and the shape of its input, from one forward."""
    model = timm.create_model("test_resnet", num_classes=10)
    seen: list[tuple[str, nn.Conv2d, tuple[int, ...]]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.append((name, mod, args[0].shape)))
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    model(torch.randn(2, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    return seen


def timed(fn, x: torch.Tensor, repeats: int) -> float:
    for _ in range(2):
        fn(x).sum().backward()
    started = time.perf_counter()
    for _ in range(repeats):
        fn(x).sum().backward()
    return (time.perf_counter() - started) / repeats * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    k, repeats = (2, 1) if args.smoke else (args.slots, args.repeats)
    rows = []
    for name, conv, shape in shapes(16):
        slots = [nn.Sequential(nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                         conv.padding, bias=False)) for _ in range(k)]
        wide = widen(copy.deepcopy(slots[0]).to("meta"), slots)
        weight = torch.cat([s[0].weight for s in slots])
        x = torch.randn(args.batch, conv.in_channels * k, *shape[2:], requires_grad=True)

        def grouped(t):
            return F.conv2d(t, weight, None, conv.stride, conv.padding, conv.dilation, k)

        torch.testing.assert_close(wide(x), grouped(x), rtol=1e-4, atol=1e-4)
        row = {"layer": name, "input": [args.batch, conv.in_channels * k, *shape[2:]],
               "kernel": list(conv.kernel_size), "stride": list(conv.stride),
               "grouped_ms": timed(grouped, x, repeats), "wide_ms": timed(wide, x, repeats)}
        rows.append(row)
        print(f"| {name} | {row['input']} | {conv.kernel_size[0]}x{conv.kernel_size[1]} /{conv.stride[0]} | "
              f"{row['grouped_ms']:.2f} | {row['wide_ms']:.2f} | {row['grouped_ms'] / row['wide_ms']:.2f} |")
    record = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "slots": k, "batch": args.batch, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
