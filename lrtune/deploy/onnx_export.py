"""A model as ONNX, checked against PyTorch with onnxruntime when it is installed."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lrtune.deploy.files import write_atomically
from lrtune.deploy.modelfolder import LoadedModel
from lrtune.errors import ModelError, first_line

TOLERANCE = 1e-4  # largest difference between ONNX and PyTorch logits accepted


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    max_abs_diff: float | None  # against PyTorch on a random batch; None without onnxruntime


def export_onnx(loaded: LoadedModel, path: Path) -> OnnxExport:
    """Write ``path``: input ``image`` (B, 3, S, S) normalized floats, output ``logits`` (B, C)."""
    model = loaded.model.cpu().eval()
    size = loaded.image_size
    example = torch.zeros(1, 3, size, size)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
            )
    except Exception as exc:  # the exporter raises many types for an operator it cannot express
        raise ModelError(f"cannot export {loaded.architecture} to ONNX: {first_line(exc)}") from None
    data = buffer.getvalue()
    diff = check_with_onnxruntime(model, data, size)
    if diff is not None and diff > TOLERANCE:
        raise ModelError(f"the ONNX model differs from PyTorch by {diff:.2g} (over {TOLERANCE:g}); not written")
    write_atomically(path, data)
    return OnnxExport(path, diff)


def check_with_onnxruntime(model: torch.nn.Module, data: bytes, size: int) -> float | None:
    """Largest absolute logit difference on a random batch of 4, or None when onnxruntime is missing."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(x).numpy()
    got = session.run(["logits"], {"image": x.numpy()})[0]
    return float(np.max(np.abs(got - expected)))
