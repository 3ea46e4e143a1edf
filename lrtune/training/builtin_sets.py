"""Built-in image sets, made from scikit-learn's bundled 8x8 digits with no download.

- ``digits``: all 1,797 digits, upscaled.
- ``digits-lt``: a fixed long-tailed cut of them (the last class keeps a tenth).
- ``digits-writers``: 2,600 digits redrawn by 120 synthetic writers, each with
  a slant, shear, size, stroke weight, blur, ink, paper and sensor noise of
  their own, and far more long-tailed (the rarest class has a twentieth of the
  commonest). Images carry their writer as a group, so a split never puts one
  writer on both sides: the way a person-level split keeps one person's photos
  out of validation.

Each set is the same on every machine: it depends on a fixed seed only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

DIGITS_IMBALANCE = 0.1  # digits-lt keeps this share of the last class, and a geometric ramp in between
WRITERS_IMAGES = 2600  # digits-writers: images in all
WRITERS_COUNT = 120  # digits-writers: synthetic writers, the groups of the split
WRITERS_IMBALANCE = 0.05  # digits-writers: the rarest class's share of the commonest, geometric in between


def load_digit_set(name: str, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(images ``(N, S, S, 3)`` uint8, labels ``(N,)`` int64, writer ids or None) of a built-in set."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    source = np.round(digits.images * 255 / 16).astype(np.uint8)
    if name == "digits-writers":
        return _draw_writers(source, digits.target, image_size)
    keep = np.arange(len(digits.target))
    if name == "digits-lt":
        rng = np.random.default_rng(0)
        chosen = []
        for k in range(10):
            members = np.flatnonzero(digits.target == k)
            chosen.append(rng.choice(members, size=round(len(members) * DIGITS_IMBALANCE ** (k / 9)), replace=False))
        keep = np.sort(np.concatenate(chosen))
    images = np.empty((len(keep), image_size, image_size, 3), np.uint8)
    for i, image in enumerate(source[keep]):
        resized = Image.fromarray(image).resize((image_size, image_size), Image.Resampling.BILINEAR)
        images[i] = np.asarray(resized)[..., None]
    return images, digits.target[keep].astype(np.int64), None


def _draw_writers(source: np.ndarray, target: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``digits-writers``: each image a source digit of its class, drawn in its writer's hand."""
    rng = np.random.default_rng(0)
    share = WRITERS_IMBALANCE ** (np.arange(10) / 9)
    labels = np.repeat(np.arange(10), np.round(WRITERS_IMAGES * share / share.sum()).astype(int)).astype(np.int64)
    writers = rng.integers(WRITERS_COUNT, size=len(labels))
    style = _writer_styles(rng, WRITERS_COUNT)
    by_class = [np.flatnonzero(target == k) for k in range(10)]
    images = np.empty((len(labels), size, size, 3), np.uint8)
    for i, (k, w) in enumerate(zip(labels, writers)):
        digit = Image.fromarray(source[rng.choice(by_class[k])]).resize((size, size), Image.Resampling.BILINEAR)
        images[i] = _in_hand(digit, {name: values[w] for name, values in style.items()}, rng)[..., None]
    return images, labels, np.array([f"w{w:03d}" for w in writers])


def _writer_styles(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "slant": rng.normal(0, 12, n),  # degrees
        "shear": rng.normal(0, 0.25, n),
        "scale": rng.uniform(0.7, 1.0, n),  # of the frame the digit fills
        "bold": rng.random(n) < 0.4,  # strokes thickened by a pixel
        "blur": rng.uniform(0, 1.2, n),  # Gaussian radius, pixels
        "ink": rng.uniform(0.45, 1.0, n),  # contrast of the strokes
        "paper": rng.uniform(0, 0.35, n),  # brightness of the background
        "noise": rng.uniform(4, 30, n),  # sensor noise, grey levels
    }


def _in_hand(digit: Image.Image, style: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """One digit drawn with a writer's style, plus a little jitter of its own."""
    size = digit.size[0]
    angle = np.deg2rad(style["slant"] + rng.normal(0, 4))
    zoom = 1 / (style["scale"] * rng.uniform(0.92, 1.08))
    m = np.array([[np.cos(angle), -np.sin(angle) + style["shear"]], [np.sin(angle), np.cos(angle)]]) * zoom
    centre = np.full(2, size / 2)
    shift = centre - m @ centre + rng.normal(0, 1.5 * size / 32, 2)
    coeffs = (m[0, 0], m[0, 1], shift[0], m[1, 0], m[1, 1], shift[1])
    digit = digit.transform((size, size), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)
    if style["bold"]:
        digit = digit.filter(ImageFilter.MaxFilter(3))
    digit = digit.filter(ImageFilter.GaussianBlur(float(style["blur"]) * size / 32))
    ink = np.asarray(digit, np.float32) * style["ink"] * (1 - style["paper"])
    drawn = style["paper"] * 255 + ink + rng.normal(0, style["noise"], ink.shape)
    return np.clip(np.round(drawn), 0, 255).astype(np.uint8)
