"""The choice rule: never slower than FP32 in the same run, fastest by the objective, ties to the smaller file."""
from __future__ import annotations

from statistics import median
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeai.optimize.search import Row

MIN_SPEEDUP = 1.03      # chosen over FP32 only at >= 1.03x median AND faster in every round
NOT_SLOWER = 0.97       # --objective size: a smaller file must not be measurably slower
TIE = 0.01              # objectives within 1% are a tie, broken by the other (size, or speed)


def gate(ratios: list[float]) -> tuple[bool, str]:
    """The never-slower rule on per-round speedups (baseline / candidate, same round)."""
    if not ratios:
        return False, "not timed"
    med = median(ratios)
    if med < MIN_SPEEDUP:
        return False, f"median speedup {med:.3f}x < {MIN_SPEEDUP}x"
    slow = [i for i, r in enumerate(ratios, 1) if r <= 1.0]
    if slow:
        return False, (f"median speedup {med:.3f}x but not faster in round {slow[0]} of {len(ratios)} "
                       f"({ratios[slow[0] - 1]:.3f}x)")
    return True, f"median speedup {med:.3f}x, faster in all {len(ratios)} rounds"


def rank(rows: list[Row], baseline: Row, objective: str) -> tuple[Row, str, dict[str, str], list[Row]]:
    """(best row, why, each timed row's verdict, the rows tied with the best); pure: marks nothing.

    The best is FP32 when no candidate passes the rules; ties go to the smaller file (to the
    faster one for --objective size).
    """
    stat = "p90" if objective == "p90" else "p50"
    base_size = baseline.built.size_bytes if baseline.built else None
    eligible, verdicts = [], {}
    for r in rows:
        if r is baseline or r.status not in ("ok", "chosen") or r.timing is None:
            continue
        ratios = r.timing.speedups(stat)
        if objective == "size":
            med = median(ratios)
            ok = base_size is not None and r.built.size_bytes < base_size and med >= NOT_SLOWER
            verdicts[r.id] = (f"{r.built.size_bytes / base_size:.2f}x the FP32 size at {med:.3f}x speed" if ok else
                              "not smaller than FP32" if r.built.size_bytes >= base_size else
                              f"slower than FP32 (median {med:.3f}x < {NOT_SLOWER}x)")
        else:
            ok, verdicts[r.id] = gate(ratios)
        if ok:
            eligible.append(r)
    if not eligible:
        timed = [r for r in rows if r is not baseline and r.timing is not None and not r.timing.error]
        rule = ("a smaller file not slower than" if objective == "size"
                else f">= {MIN_SPEEDUP}x median and faster in every round than")
        why = (f"no candidate passed the rules against FP32 in the same run ({rule} FP32); FP32 is kept"
               if timed else "no candidate was within the accuracy budget and limits, so none was timed; "
                             "FP32 is kept")
        return baseline, why, verdicts, []
    if objective == "size":
        smallest = min(r.built.size_bytes for r in eligible)
        close = [r for r in eligible if r.built.size_bytes <= smallest * (1 + TIE)]
        best = max(close, key=lambda r: r.speedup)
    else:
        fastest = max(r.speedup for r in eligible)
        close = [r for r in eligible if r.speedup >= fastest * (1 - TIE)]
        best = min(close, key=lambda r: (r.built.size_bytes, -r.speedup))
    why = f"{best.id}: {verdicts[best.id]}"
    if len(close) > 1:
        why += (f"; tied within {TIE:.0%} with {', '.join(r.id for r in close if r is not best)}, chosen as "
                + ("the faster" if objective == "size" else "the smaller file"))
    return best, why, verdicts, close


def choose(rows: list[Row], baseline: Row, objective: str) -> tuple[Row, str]:
    """`rank`, then mark the rows: the chosen one, and why each other timed one lost."""
    best, why, verdicts, _ = rank(rows, baseline, objective)
    for r in rows:
        if r.id in verdicts:
            r.status, r.reason = "ok", verdicts[r.id]
    best.status = "chosen"
    if best is baseline:
        baseline.reason = why
    else:
        baseline.status, baseline.reason = "ok", "the FP32 baseline every candidate is timed against"
    return best, why
