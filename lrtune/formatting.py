"""How numbers are written, the same in the CLI, ``show`` and the report."""

from __future__ import annotations

from typing import Any, Mapping

from lrtune.config import METRICS, metric_label


def format_metric(value: float | None) -> str:
    """A macro-F1 or accuracy: four decimals, ``-`` when missing."""
    return "-" if value is None else f"{value:.4f}"


def format_value(value: Any) -> str:
    """A parameter value: floats with three significant digits (an LR of ``0.00123``), lists joined."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def format_params(params: dict[str, Any]) -> str:
    """``lr=0.00123, scheduler=cosine, ...`` in the order given."""
    return ", ".join(f"{k}={format_value(v)}" for k, v in params.items())


def format_duration(seconds: float) -> str:
    """``42s``, ``3m 05s`` or ``2h 07m``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table with a dashed rule under the header."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def format_test_split(record: Any) -> list[str]:
    """The stored test-split record (``--test-fraction``) as plain lines for ``show`` and the report; none without one."""
    if not isinstance(record, dict) or "n_test" not in record:
        return []
    lines = []
    label = metric_label(record.get("metric"))
    for role in ("best", "baseline"):
        part = record.get(role)
        if isinstance(part, dict):
            low, high = part["ci95"]
            value = part.get("value", part.get("macro_f1"))  # macro_f1: a record from before --metric
            lines.append(f"{role} trial {part['trial']}: test {label} {value:.4f} "
                         f"(95% interval {low:.4f} to {high:.4f})")
    gain = record.get("gain")
    if isinstance(gain, dict):
        low, high = gain["ci95"]
        verdict = "holds on the test split" if gain["holds"] else "does not hold on the test split (the interval includes 0)"
        lines.append(f"gain {gain['value']:+.4f} (95% interval {low:+.4f} to {high:+.4f}): {verdict}")
    lines += [str(m) for m in record.get("missing") or []]
    if record.get("note"):
        lines.append(str(record["note"]))
    return [f"test split ({record['n_test']} images, no trial saw them): " + lines[0], *lines[1:]] if lines else []


def format_lr_range(record: Any) -> list[str]:
    """The study's stored LR range test as one line for ``show``: its suggestion, why none, or why it was skipped."""
    if not isinstance(record, dict):
        return []
    if record.get("skipped"):
        return [f"LR range test skipped: {record['skipped']}"]
    bounds = record.get("bounds")
    span = f"; trials sample LRs from {bounds[0]:.3g} to {bounds[1]:.3g}" if isinstance(bounds, list) and len(bounds) == 2 else ""
    if record.get("suggestion") is None:
        return [f"LR range test: {record.get('rule', 'no suggestion')}{span}"]
    return [f"LR range test: suggested {record['suggestion']:.3g} by {record.get('rule', '?')}{span}"]


def ordered_scores(scores: Mapping[str, Any], metric: str | None) -> dict[str, Any]:
    """The metrics of ``scores`` that ``METRICS`` names, ``metric`` (the study's) first."""
    first = metric if metric in METRICS else "macro_f1"
    return {name: scores.get(name) for name in (first, *(m for m in METRICS if m != first)) if name in scores}


def format_scores(scores: Mapping[str, Any], metric: str | None) -> str:
    """``balanced accuracy 0.9312, macro-F1 0.9104, ...``: every metric, the study's first, ``-`` for none."""
    return ", ".join(f"{metric_label(name)} {format_metric(value)}" for name, value in ordered_scores(scores, metric).items())
