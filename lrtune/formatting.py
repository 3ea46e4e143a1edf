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


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _span(ci: Any) -> str:
    """A 95% interval of a score in [0, 1]; one that reaches past the score's range (a few seeds' t-interval)
    is clipped to it, and says so."""
    if not (isinstance(ci, list) and len(ci) == 2):
        return "-"
    low, high = max(0.0, ci[0]), min(1.0, ci[1])
    clipped = " (clipped to 0..1: too few seeds to say more)" if (low, high) != (ci[0], ci[1]) else ""
    return f"{low:.4f} to {high:.4f}{clipped}"


def format_confirmed(record: Any) -> list[str]:
    """``lrtune confirm``'s ranking (the study's ``confirmed`` record) as lines; none without one."""
    if not isinstance(record, dict) or not record.get("configs"):
        return []
    label = metric_label(record.get("metric"))
    configs = record["configs"]
    with_test = any("test_mean" in c for c in configs)
    rows = []
    for rank, c in enumerate(configs, start=1):
        row = [str(rank), f"{c['trial']} ({c['role']})", format_metric(c["mean"]), _span(c["ci95"]),
               " ".join(f"{v:.4f}" for v in c["runs"]) or "-", format_metric(c["single_run"])]
        if with_test:
            row += [format_metric(c.get("test_mean")), _span(c.get("test_ci95"))]
        rows.append(row)
    header = ["rank", "trial", f"mean {label}", "95% interval", "runs", "single run"]
    header += ["test mean", "test 95% interval"] if with_test else []
    lines = [f"confirmed over {record['seeds']} fresh seeds (validation {label}, best mean first):",
             table(rows, header)]
    single, winner = record.get("single_run_winner"), record.get("winner")
    if record.get("still_first"):
        lines.append(f"the single-run winner, trial {single}, is still first")
    elif winner is not None:
        place = next((i for i, c in enumerate(configs, start=1) if c["trial"] == single), None)
        where = f"ranks {_ordinal(place)}" if place else "was not confirmed"
        lines.append(f"the single-run winner, trial {single}, {where}; trial {winner} is first")
    if not record.get("complete"):
        lines.append("some runs are missing: run `lrtune confirm` again to finish them")
    return lines


def format_against_lr_free(values: list[tuple[int, str, float]], record: Any, metric: str | None) -> list[str]:
    """One line: the tuned winner against the best LR-free baseline; over seeds with an interval when confirmed.

    ``values`` are the complete trials' (number, role, value), role ``tuned``, ``baseline`` or an optimizer's name.
    """
    label = metric_label(metric)
    confirmed = record.get("against_lr_free") if isinstance(record, dict) else None
    if isinstance(confirmed, dict):
        means = {c["trial"]: c["mean"] for c in record["configs"]}
        ci = confirmed.get("ci95")
        interval = f"95% interval {ci[0]:+.4f} to {ci[1]:+.4f}" if ci else "one seed: no interval"
        return [f"tuned winner, trial {confirmed['tuned']}: {label} {format_metric(means[confirmed['tuned']])} "
                f"against the best LR-free baseline, {confirmed['name']} (trial {confirmed['lr_free']}): "
                f"{format_metric(means[confirmed['lr_free']])}; gain {confirmed['gain']:+.4f} "
                f"({interval}, over {record['seeds']} seeds)"]
    tuned = [v for v in values if v[1] in ("tuned", "baseline")]
    free = [v for v in values if v[1] not in ("tuned", "baseline")]
    if not tuned or not free:
        return []
    best, other = max(tuned, key=lambda v: (v[2], -v[0])), max(free, key=lambda v: (v[2], -v[0]))
    return [f"tuned winner, trial {best[0]}: {label} {format_metric(best[2])} against the best LR-free baseline, "
            f"{other[1]} (trial {other[0]}): {format_metric(other[2])}; gain {best[2] - other[2]:+.4f} "
            "(single runs: `lrtune confirm` gives it an interval)"]


def body_lr(params: Mapping[str, Any], lr_scales: Any = None) -> str:
    """A fine-tune's body LR beside its head's (``lr``): one value for a ratio, the range of its layer groups
    for a layer decay; "" when the whole model trains at ``lr``."""
    lr = params.get("lr")
    if not isinstance(lr, (int, float)):
        return ""
    if isinstance(params.get("body_ratio"), (int, float)):
        return format_value(lr * params["body_ratio"])
    if isinstance(params.get("layer_decay"), (int, float)) and isinstance(lr_scales, list) and len(lr_scales) > 1:
        body = lr_scales[:-1]
        return f"{format_value(lr * min(body))} to {format_value(lr * max(body))}"
    return ""
