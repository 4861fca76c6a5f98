"""`edgeai bench --compare BASE.json NEW.json [--threshold 5%]`: p50 ratios per target, failing on a regression.

A target regressed when its p50 slowed by more than the threshold AND by more than either run's own
spread (p90/p50): two runs of the same model on a busy machine differ by about that much, so a
slowdown inside it is not evidence of a regression.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from edgeai import typed
from edgeai.bench.results import SCHEMA, BenchReport
from edgeai.errors import InputSpecError


@dataclass(frozen=True)
class Row:
    """One target in both reports (or in one of them)."""

    target: str
    base_p50_ms: float | None
    new_p50_ms: float | None
    ratio: float | None          # new / base p50: above 1 is slower
    regression: bool
    note: str = ""


def parse_threshold(text: str) -> float:
    """'5%' -> 0.05, '0.05' -> 0.05."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):  # inf would let every slowdown pass
        raise InputSpecError(f"bad --threshold {text!r}: expected a slowdown such as 5% or 0.05")
    return value


def load_report(path: str | Path) -> BenchReport:
    """A bench --json report, every field type-checked: InputSpecError naming the file and the bad field."""
    try:
        data = typed.read_json(path)
    except FileNotFoundError:
        raise InputSpecError(f"report {str(path)!r} does not exist") from None
    except OSError as e:
        raise InputSpecError(f"report {str(path)!r} cannot be read: {e.strerror or e}") from None
    except ValueError as e:
        raise InputSpecError(f"report {str(path)!r} is {e}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        schema = data.get("schema") if isinstance(data, dict) else None
        raise InputSpecError(f"{str(path)!r} is not an {SCHEMA} report (schema {schema!r}); "
                             "write one with edgeai bench --json")
    try:
        report = typed.build(BenchReport, data, strict=False)  # a newer edgeai (on a device) may add fields
        for i, r in enumerate(report.results):
            if r.ok and r.timing is None:
                raise typed.FieldError(f"results[{i}].timing", "a result with status 'ok' needs its timing")
            p50 = r.timing.p50_ms if r.timing is not None else None
            if p50 is not None and not (p50 > 0 and math.isfinite(p50)):
                raise typed.FieldError(f"results[{i}].timing.p50_ms", f"expected a time > 0, got {p50!r}")
    except typed.FieldError as e:
        raise InputSpecError(f"report {str(path)!r} is not a valid {SCHEMA} report ({e}); "
                             "write one with edgeai bench --json") from None
    return report


def compare(base: BenchReport, new: BenchReport, threshold: float) -> list[Row]:
    """Rows matched by target label (by position when no label is shared and the counts agree)."""
    base_by, new_by = {r.target: r for r in base.results}, {r.target: r for r in new.results}
    if not set(base_by) & set(new_by) and len(base.results) == len(new.results):
        pairs = [(b.target if b.target == n.target else f"{b.target} -> {n.target}", b, n)
                 for b, n in zip(base.results, new.results)]
    else:
        pairs = [(name, base_by.get(name), new_by.get(name)) for name in dict.fromkeys([*base_by, *new_by])]
    rows = []
    for name, b, n in pairs:
        b_p50 = b.timing.p50_ms if b is not None and b.ok else None
        n_p50 = n.timing.p50_ms if n is not None and n.ok else None
        if (b is not None and b.ok and b_p50 is None) or (n is not None and n.ok and n_p50 is None):
            rows.append(Row(name, b_p50, n_p50, None, False, "no p50 to compare (benchmark_model without median)"))
        elif b_p50 is not None and n_p50 is not None:
            rows.append(_timed_row(name, b.timing, n.timing, threshold))
        elif n is None:
            rows.append(Row(name, b_p50, None, None, False, "only in the base report"))
        elif b is None:
            rows.append(Row(name, None, n_p50, None, False, "only in the new report"))
        elif n_p50 is None:
            rows.append(Row(name, b_p50, None, None, b_p50 is not None, "failed in the new report"))
        else:
            rows.append(Row(name, None, n_p50, None, False, "failed in the base report"))
    return rows


def spread(timing) -> float:
    """p90/p50 of one run (1.0 when the report has no p90): how much its own runs vary."""
    p90 = getattr(timing, "p90_ms", None)
    return p90 / timing.p50_ms if p90 and timing.p50_ms else 1.0


def _timed_row(name: str, b, n, threshold: float) -> Row:
    ratio = n.p50_ms / b.p50_ms
    noise = max(spread(b), spread(n))
    if ratio > 1 + threshold and ratio <= noise:
        return Row(name, b.p50_ms, n.p50_ms, ratio, False, f"within the runs' spread (p90/p50 {noise:.3f})")
    return Row(name, b.p50_ms, n.p50_ms, ratio, ratio > max(1 + threshold, noise))


def environment_differences(base: BenchReport, new: BenchReport) -> list[str]:
    """Fields of the fingerprint that differ: a ratio across machines measures the machines too."""
    def part(e: dict, key: str) -> dict:  # env is free-form: a missing or odd section reads as unknown
        value = e.get(key)
        return value if isinstance(value, dict) else {}
    keys = [("device", lambda e: e.get("device", "local")), ("CPU", lambda e: part(e, "cpu").get("model")),
            ("threads", lambda e: e.get("threads")), ("provider", lambda e: e.get("provider")),
            ("onnxruntime", lambda e: part(e, "versions").get("onnxruntime"))]
    return [f"{name}: {get(base.env)} -> {get(new.env)}" for name, get in keys if get(base.env) != get(new.env)]


def run_compare(base_path: str, new_path: str, threshold_text: str) -> int:
    """Print the table; 1 when any target is slower than the threshold allows (or newly fails), else 0."""
    from rich.console import Console
    from rich.table import Table

    from edgeai.bench.report import ms
    from edgeai.console import print_table

    threshold = parse_threshold(threshold_text)
    base, new = load_report(base_path), load_report(new_path)
    rows = compare(base, new, threshold)
    table = Table(title=f"edgeai bench --compare: p50 of {new_path} / p50 of {base_path} "
                        f"(> 1 is slower; regression past {threshold:.1%} and past the runs' p90/p50)",
                  title_justify="left")
    for col in ("target", "base p50 ms", "new p50 ms", "ratio", "verdict"):
        table.add_column(col, justify="left" if col in ("target", "verdict") else "right")
    for r in rows:
        verdict = "REGRESSION" if r.regression else (r.note or "ok")
        if r.regression and r.note:
            verdict += f" ({r.note})"
        table.add_row(r.target, ms(r.base_p50_ms), ms(r.new_p50_ms),
                      "-" if r.ratio is None else f"{r.ratio:.3f}", verdict)
    console = Console()
    print_table(table, console, fold=("target", "verdict"))
    for diff in environment_differences(base, new):
        console.print(f"note: the reports differ in {diff}", highlight=False, markup=False)
    regressions = [r for r in rows if r.regression]
    if regressions:
        console.print(f"{len(regressions)} regression(s) past {threshold:.1%}", highlight=False, markup=False)
    return 1 if regressions else 0
