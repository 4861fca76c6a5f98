"""Pruned candidates: in which formats, which ratios, and how long each is distilled (successive halving).

Without training data a pruned model is not distilled: ratios go up in each format until one loses
too much accuracy (more pruning would only lose more). With training data the budget is spent in
two rungs (edgeai/optimize/planner.py does the arithmetic on measured costs):
1. screen: every ratio (the most expected speedup first, as many as fit), pruned and distilled for
   a short fixed time in the format whose builds are cheapest, quantized with the schemes that won
   unpruned there, scored and timed;
2. the one or two most promising (format, ratio) arms by expected speedup (screens within a few
   times the accuracy budget whose distillation was cut by its time, else the closest one) are
   distilled again with the rest of the budget, in any format within FORMAT_CLOSE of the fastest;
   an arm whose expected speedup does not beat the best accepted candidate is not (a longer
   distillation buys accuracy, not speed), except for --objective size.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from edgeai.optimize.candidates import Unit, prune_steps, prune_units
from edgeai.optimize.choice import MIN_SPEEDUP, TIE
from edgeai.optimize.planner import SLACK, Screened, expected_speedup, plan_final, promising, screen_minutes

if TYPE_CHECKING:
    from edgeai.optimize.search import Row, Search

FORMAT_CLOSE = 1.5      # prune in every format whose best unpruned speedup is within this of the best one


def prune_formats(search: Search) -> list[tuple[str, tuple[str, ...], float]]:
    """(format, quantization schemes that beat its FP32, its best unpruned speedup) for every format
    within FORMAT_CLOSE of the fastest, fastest first."""
    best = search.best_unpruned()
    if not best:
        return [(search.config.formats[0], (), 1.0)]
    top = max(best.values())
    out = []
    for fmt, speedup in sorted(best.items(), key=lambda kv: -kv[1]):
        if speedup * FORMAT_CLOSE < top:
            continue
        fp32 = next((r.speedup for r in search.rows.values() if r.candidate.format == fmt
                     and not r.candidate.steps and r.candidate.scheme == "fp32" and r.speedup), None)
        schemes = tuple(r.candidate.scheme for r in search.rows.values()
                        if r.candidate.format == fmt and not r.candidate.steps and r.candidate.scheme != "fp32"
                        and r.status == "ok" and r.speedup is not None and fp32
                        and r.speedup >= MIN_SPEEDUP * fp32)
        out.append((fmt, schemes, speedup))
    return out


def prune_branch(search: Search) -> None:
    cfg = search.config
    if not cfg.ratios:
        return
    if cfg.model.endswith(".onnx"):
        search.notes.append("pruning skipped: it needs a PyTorch model, not an ONNX file")
        return
    arms = prune_formats(search)
    others = [f for f in cfg.formats if f not in {a[0] for a in arms}]
    if others:
        search.notes.append(f"pruning tried in {', '.join(a[0] for a in arms)} only: unpruned, "
                            f"{', '.join(others)} was more than {FORMAT_CLOSE:g}x slower than the fastest format")
    if cfg.train_data:
        _halving(search, arms)
    else:
        search.notes.append("pruning without --train-data is not distilled (accuracy usually drops fast)")
        _plain(search, arms)


def _plain(search: Search, arms: list) -> None:
    """Each format: ascending ratios (--workers at a time) until one fails or loses too much accuracy."""
    ratios, step = sorted(search.config.ratios), max(1, search.config.workers)
    per_format = {fmt: prune_units(fmt, tuple(ratios), None, schemes) for fmt, schemes, _ in arms}
    search._plan([u for units in per_format.values() for u in units], [])
    for fmt, units in per_format.items():
        last = None
        for i in range(0, len(units), step):
            batch = units[i:i + step]
            estimate = last if last is not None else SLACK * search.costs(fmt).overhead_s
            t0 = search.lab.clock()
            if not search.build_if_it_fits(batch, estimate):
                why = search.rows[batch[0].candidates[0].id].reason
                search._skip([c for us in per_format.values() for u in us for c in u.candidates], why)
                return
            last = search.lab.clock() - t0
            failed = next((search.rows[u.candidates[0].id] for u in batch
                           if _fails(search, search.rows[u.candidates[0].id])), None)
            if failed is not None:
                search._skip([c for u in units[i + step:] for c in u.candidates],
                             f"a smaller pruning ({failed.id}) already failed: {failed.reason}")
                break


def _fails(search: Search, row: Row) -> bool:
    """A pruned FP32 model that could not be built or lost too much accuracy: more pruning will not help.
    (One over --max-size-mb does not stop the branch: more pruning makes it smaller.)"""
    over = row.drop is not None and row.drop > search.config.max_drop + 1e-12
    return row.status == "failed" or (row.status == "rejected" and over)


def _halving(search: Search, arms: list) -> None:
    """Rung 0 screens the ratios; rung 1 distills the best one or two (format, ratio) arms longer."""
    cfg = search.config
    # a screen measures accuracy, which carries over between formats: screens run where builds are cheapest
    fmt0, schemes0, best0 = min(arms, key=lambda a: search.costs(a[0], pruned=True).overhead_s)
    n = 1 + len(schemes0)
    costs = search.costs(fmt0, pruned=True)
    # screens cost the same: the most expected speedup per minute is the most expected speedup
    ordered = sorted(cfg.ratios, key=lambda r: -expected_speedup(best0, None, r))
    ratios, minutes = _screens_that_fit(search.seconds_left(), ordered, costs, n)
    if minutes is not None and cfg.distill.get("max_minutes"):
        minutes = min(minutes, float(cfg.distill["max_minutes"]))
    info = {"method": "successive halving in two rungs: every ratio screened with a short distillation, "
                      "then the one or two most promising distilled with the rest of the budget",
            "screen_format": fmt0, "screen_minutes": minutes, "screened": [], "final": []}
    search.pruning = info
    if minutes is None:
        units = prune_units(fmt0, tuple(ordered), dict(cfg.distill), schemes0)
        search._plan(units, [])
        search._skip([c for u in units for c in u.candidates],
                     f"no time for even a {0.25:g} min screen ({search.seconds_left() / 60:.1f} min left)")
        info["why"] = "nothing was screened: the budget was spent"
        search._stop("budget")
        return
    # as many screens as the minutes were planned for; one that fails at once (a ratio the model
    # cannot reach) gives its turn to the next ratio
    screens, wanted = [], len(ratios)
    for r in ordered:
        unit = prune_units(fmt0, (r,), {**cfg.distill, "max_minutes": minutes}, schemes0)[0]
        search._plan([unit], [])
        if sum(1 for u in screens if not search.rows[u.candidates[0].id].status == "failed") >= wanted:
            search._skip(unit.candidates, f"not screened: {wanted} screen(s) of {minutes:g} min fit in the budget")
            search._stop("budget")
            continue
        costs = search.costs(fmt0, pruned=True)    # the last screen's measured build, once there is one
        if not search.build_if_it_fits(unit, SLACK * (60 * minutes + costs.overhead_s), 60 * minutes):
            info["why"] = "the budget ended during the screens"
            continue
        _measured_overhead(search, unit)
        screens.append(unit)
    if "why" in info:
        return
    screened = [s for s in (_screened(search, u, best0) for u in screens) if s is not None]
    info["screened"] = [s.__dict__ for s in screened]
    arms_final, slower = _faster_than_accepted(search, _arms(promising(screened, cfg.max_drop), arms, best0))
    plan, why = plan_final(arms_final, search.seconds_left(),
                           {fmt: search.costs(fmt, pruned=True) for fmt, _, _ in arms}, n, minutes)
    why = f"{why}; {slower}" if slower else why
    info["why"], info["final"] = why, [{"format": a.format, "ratio": a.ratio, "minutes": m} for a, m in plan]
    done = ", ".join(f"{u.steps[0]['prune']['ratio']:g}" for u in screens)
    search.notes.append(f"pruning: screened {done} in {fmt0} with {minutes:g} min "
                        f"of distillation each (successive halving); {why}")
    if arms_final and not plan:   # worth distilling longer, but the budget is spent
        search._stop("budget")
    schemes = {fmt: s for fmt, s, _ in arms}
    for arm, m in plan:
        unit = Unit(arm.format, prune_steps(arm.ratio, _final_distill(cfg.distill, arm, m)), schemes[arm.format])
        search._plan([unit], [])
        c = search.costs(arm.format, pruned=True)
        if not search.build_if_it_fits(unit, SLACK * (60 * m + c.overhead_s), 60 * m):
            return


def _faster_than_accepted(search: Search, arms: list[Screened]) -> tuple[list[Screened], str]:
    """The arms whose speedup could beat the best accepted candidate so far (a longer distillation buys
    accuracy, not speed), and a note on the others; all of them for --objective size."""
    if search.config.objective == "size":
        return arms, ""
    best = max((r for r in search.rows.values() if r.status in ("ok", "chosen") and r.speedup is not None),
               key=lambda r: r.speedup, default=None)
    if best is None:
        return arms, ""
    keep = [a for a in arms if a.speedup > best.speedup * (1 + TIE)]
    dropped = [a for a in arms if a not in keep]
    if not dropped:
        return keep, ""
    names = ", ".join(f"{a.format} prune{a.ratio:g}" for a in dropped)
    return keep, (f"not distilled longer: {names} (expected speedup no more than the accepted "
                  f"{best.id}'s {best.speedup:.2f}x)")


def _screens_that_fit(seconds_left: float, ordered: list[float], costs, candidates: int) -> tuple[list[float], float | None]:
    """The most ratios (first ones of `ordered`) whose screens fit in the time left, and their minutes."""
    for k in range(len(ordered), 0, -1):
        minutes = screen_minutes(seconds_left, k, costs, candidates)
        if minutes is not None:
            return ordered[:k], minutes
    return [], None


def _final_distill(options: dict, arm: Screened, minutes: float) -> dict:
    """The last rung's distill options: `minutes` as its limit, and as many epochs as the measured seconds
    per epoch fit in them (at most the ones asked for), so its learning-rate schedule ends within them."""
    out = {**options, "max_minutes": minutes}
    if arm.seconds_per_epoch and arm.epochs:
        out["epochs"] = max(1, min(int(arm.epochs), int(0.9 * 60 * minutes / arm.seconds_per_epoch)))
    return out


def _measured_overhead(search: Search, unit: Unit) -> None:
    """A pruned build's time besides distillation, measured: what the planner charges the next ones."""
    built = search.rows[unit.candidates[0].id].built
    if built is None or not built.distill or search.last_build_s is None:
        return
    rest = search.last_build_s - float(built.distill.get("seconds") or 0.0)
    if rest > 0:
        search.build_s[f"{unit.format}+prune"] = rest


def _screened(search: Search, unit: Unit, best0: float) -> Screened | None:
    rows = [search.rows[c.id] for c in unit.candidates]
    fp32 = rows[0]
    if fp32.built is None or fp32.built.error:
        return None
    ratio = unit.steps[0]["prune"]["ratio"]
    drops = [r.drop for r in rows if r.drop is not None]
    speedups = [r.speedup for r in rows if r.status == "ok" and r.speedup is not None]
    d = fp32.built.distill or {}
    per_epoch = None
    if d.get("seconds") and d.get("samples_trained") and d.get("train_samples"):
        per_epoch = float(d["seconds"]) * d["train_samples"] / d["samples_trained"]
    return Screened(unit.format, ratio, min(drops) if drops else None,
                    max(speedups) if speedups else expected_speedup(best0, None, ratio),
                    converged=not d.get("out_of_time", False) and fp32.built.capped_minutes is None,
                    seconds_per_epoch=per_epoch, epochs=d.get("epochs"))


def _arms(screened: list[Screened], arms: list, best0: float) -> list[Screened]:
    """Each promising screen in every pruned format, its speedup carried over by the formats' unpruned
    ratio; most expected speedup first."""
    out = [Screened(fmt, s.ratio, s.drop, s.speedup * best / best0, s.converged, s.seconds_per_epoch, s.epochs)
           for s in screened for fmt, _, best in arms]
    return sorted(out, key=lambda a: (-a.speedup, a.ratio))


def format_table(search: Search) -> list[dict]:
    """Each format against the same baseline (the first format's FP32): its FP32, its best unpruned and
    its best accepted candidate."""
    out = []
    for fmt in search.config.formats:
        rows = [r for r in search.rows.values() if r.candidate.format == fmt and r.speedup is not None
                and r.status in ("ok", "chosen")]
        fp32 = next((r for r in rows if r.candidate.scheme == "fp32" and not r.candidate.steps), None)
        unpruned = max((r for r in rows if not r.candidate.steps), key=lambda r: r.speedup, default=None)
        best = max(rows, key=lambda r: r.speedup, default=None)
        out.append({"format": fmt, "baseline": search.baseline.id,
                    "fp32_speedup": fp32.speedup if fp32 else None,
                    "best_unpruned": unpruned.id if unpruned else None,
                    "best_unpruned_speedup": unpruned.speedup if unpruned else None,
                    "best": best.id if best else None, "best_speedup": best.speedup if best else None})
    return out
