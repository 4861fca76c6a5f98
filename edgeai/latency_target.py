"""Turn a prune step's latency target (target_speedup / target_latency_ms) into a MACs ratio, by measurement.

The prune step stays torch-in/torch-out and only understands MACs; speed is a property of the
exported artifact in its runtime on this machine. So the pipeline calls `resolve` before a prune
step with a latency target: the unpruned model is exported and timed once, then candidate ratios
are pruned, exported and timed (batch 1, in a fresh process) until one meets the target. The
first guess assumes latency tracks MACs; later ones interpolate between the measured points
(secant on the bracket, bisection when that stalls), so a few exports suffice.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from edgeai.errors import ConfigError

log = logging.getLogger(__name__)

MAX_EXPORTS = 5        # pruned candidates exported and timed, at most
TOLERANCE = 0.04       # a candidate within 4% of the target latency is accepted
RATIO_BOUNDS = (0.05, 0.95)


@dataclass(frozen=True)
class Probe:
    ratio: float       # fraction of MACs removed (0 = unpruned)
    ms: float          # p50 latency, batch 1


def wants_latency(config: Any) -> bool:
    return getattr(config, "target_speedup", None) is not None or getattr(config, "target_latency_ms", None) is not None


def next_ratio(probes: list[Probe], target_ms: float) -> float:
    """The next ratio to try: interpolate between the closest measured points on either side of the target."""
    slow = [p for p in probes if p.ms > target_ms]        # not pruned enough
    fast = [p for p in probes if p.ms <= target_ms]
    lo = max(slow, key=lambda p: p.ratio)
    if not fast:                                          # extrapolate from the unpruned point through lo
        base = min(probes, key=lambda p: p.ratio)
        if lo.ratio <= base.ratio or lo.ms >= base.ms:
            guess = 1 - target_ms / base.ms
        else:
            slope = (base.ms - lo.ms) / (lo.ratio - base.ratio)
            guess = lo.ratio + (lo.ms - target_ms) / slope
        return min(max(guess, lo.ratio + 0.02), RATIO_BOUNDS[1])
    hi = min(fast, key=lambda p: p.ratio)
    if hi.ms >= lo.ms:
        return (lo.ratio + hi.ratio) / 2
    guess = lo.ratio + (lo.ms - target_ms) * (hi.ratio - lo.ratio) / (lo.ms - hi.ms)
    span = hi.ratio - lo.ratio                            # keep inside the bracket, away from its ends
    return min(max(guess, lo.ratio + 0.1 * span), hi.ratio - 0.1 * span)


def search(measure: Callable[[float], float], base_ms: float, target_ms: float) -> tuple[float, list[Probe], str]:
    """(ratio, probes, note): the smallest measured ratio whose latency meets target_ms (within TOLERANCE)."""
    probes = [Probe(0.0, base_ms)]
    ratio = min(max(1 - target_ms / base_ms, RATIO_BOUNDS[0]), RATIO_BOUNDS[1])
    for _ in range(MAX_EXPORTS):
        probes.append(Probe(ratio, measure(ratio)))
        log.info("latency target: ratio %.3f -> %.3f ms (target %.3f)", ratio, probes[-1].ms, target_ms)
        if abs(probes[-1].ms - target_ms) <= TOLERANCE * target_ms:
            break
        if probes[-1].ms > target_ms and ratio >= RATIO_BOUNDS[1]:
            break
        ratio = round(next_ratio(probes, target_ms), 4)
        if any(abs(p.ratio - ratio) < 1e-3 for p in probes):
            break
    ok = [p for p in probes[1:] if p.ms <= target_ms * (1 + TOLERANCE)]
    if ok:
        best = min(ok, key=lambda p: p.ratio)
        return best.ratio, probes, ""
    best = min(probes[1:], key=lambda p: p.ms)
    return best.ratio, probes, (f"latency target {target_ms:.3f} ms not reached: the fastest pruned candidate "
                                f"(ratio {best.ratio:.2f}) measured {best.ms:.3f} ms (unpruned {base_ms:.3f} ms)")


def resolve(config: Any, module: Any, source: Any, ctx: Any, export: Callable[[Any, Path], Path],
            time_ms: Callable[[Path], float], prune_fn: Callable[..., Any]) -> tuple[Any, dict]:
    """A prune config with `ratio` found by measurement in place of its latency target, and the search record.

    export(module, dir) writes the artifact and returns its path; time_ms(path) is its p50 latency.
    """
    with tempfile.TemporaryDirectory(prefix="edgeai-latency-") as tmp:
        root = Path(tmp)
        base_ms = time_ms(export(module, root / "base"))
        target_ms = (float(config.target_latency_ms) if config.target_latency_ms is not None
                     else base_ms / float(config.target_speedup))
        if target_ms >= base_ms:
            raise ConfigError(f"prune: the unpruned model already runs in {base_ms:.3f} ms, within the latency "
                              f"target of {target_ms:.3f} ms; nothing to prune")
        plain = replace(config, target_speedup=None, target_latency_ms=None, recalibrate_bn=False)

        def measure(ratio: float) -> float:
            pruned, _ = prune_fn(module, source.torch_inputs(), replace(plain, ratio=ratio), ctx)
            return time_ms(export(pruned.eval(), root / f"r{ratio:.4f}"))

        ratio, probes, note = search(measure, base_ms, target_ms)
    notes = [f"ratio {ratio:.3f} chosen by timing {len(probes) - 1} pruned export(s) against a target of "
             f"{target_ms:.3f} ms (unpruned {base_ms:.3f} ms)"] + ([note] if note else [])
    asked = {k: getattr(config, k) for k in ("target_speedup", "target_latency_ms") if getattr(config, k) is not None}
    record = {"asked": asked, "target_ms": round(target_ms, 4), "unpruned_ms": round(base_ms, 4), "ratio": ratio,
              "probes": [{"ratio": p.ratio, "p50_ms": round(p.ms, 4)} for p in probes], "notes": notes}
    return replace(config, ratio=ratio, target_speedup=None, target_latency_ms=None), record


def for_pipeline(config: Any, module: Any, source: Any, ctx: Any, recipe: Any,
                 progress: Callable[[str], None]) -> tuple[Any, dict]:
    """`resolve` with the recipe's exporter and the benchmark's timing (batch 1, fresh process, its threads)."""
    from edgeai.bench import bench
    from edgeai.errors import EdgeAIError, ExportError
    from edgeai.exporters import get_exporter
    from edgeai.steps.prune import prune

    exporter = get_exporter(recipe.format)
    attempts = exporter.attempts(exporter.config_cls(**recipe.export))
    dims = {d: n for d, n in source.example_dims.items() if d != "batch"}
    what = f"p50 of the {recipe.format} export, batch 1, {recipe.summary.threads} thread(s)"

    def export(m: Any, folder: Path) -> Path:
        folder.mkdir(parents=True)
        path, errors = folder / f"model{exporter.suffix}", []
        for attempt in attempts:     # the first path that exports; the final export is verified as usual
            try:
                exporter.fn(m, source.torch_inputs(), source.input_specs, path, attempt)
                return path
            except EdgeAIError as e:
                errors.append(str(e))
        raise ExportError("latency target: no export path worked: " + " | ".join(errors))

    def time_ms(path: Path) -> float:
        progress(f"latency target: timing {path.parent.name} ({what})")
        r = bench([str(path)], threads=recipe.summary.threads, warmup=recipe.summary.warmup,
                  min_seconds=recipe.summary.min_seconds, batch=1, dims=dims).results[0]
        if not r.ok:
            raise ExportError(f"latency target: timing the {recipe.format} export failed: {r.error}")
        return r.timing.p50_ms

    config, record = resolve(config, module, source, ctx, export, time_ms, prune)
    record["measured"] = what
    return config, record
