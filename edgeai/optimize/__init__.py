"""`edgeai.optimize(model, out_dir, ...)`: find the fastest variant for this machine within an accuracy budget.

Candidates (FP32/FP16/INT8-dynamic/INT8-static per format, structured pruning with distillation,
prune -> quantize) are built by the export pipeline, scored on the evaluation data in their own
runtime and timed against FP32 in interleaved rounds; see edgeai/optimize/search.py for the rules.
"""
from __future__ import annotations

import logging
import sys
import types
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from edgeai.errors import ConfigError
from edgeai.optimize.config import OptimizeConfig, check_known

log = logging.getLogger(__name__)

__all__ = ["OptimizeConfig", "OptimizeResult", "optimize", "run"]


@dataclass(frozen=True)
class OptimizeResult:
    out_dir: Path
    chosen: str              # candidate id, e.g. "onnx/int8-static"
    why: str
    report: dict             # what report.json holds
    stopped: str | None = None   # None, "budget", "SIGINT" or "SIGTERM": the search stopped early

    @property
    def best_dir(self) -> Path:
        return self.out_dir / "best"


def optimize(model: str | None = None, out_dir: str | Path | None = None, *, config: OptimizeConfig | None = None,
             progress: Callable[[dict], None] | None = None, **options: Any) -> OptimizeResult:
    """Search for the fastest variant of `model` within `max_drop`; `options` are OptimizeConfig fields.

    >>> edgeai.optimize("edgeai.zoo:digits_cnn", "out/opt", inputs=["image:batch,1,32,32"],
    ...                 eval_data="test.npz", calibration="calib.npz", max_drop=1.0)
    """
    if config is None:
        if model is None:
            raise ConfigError("nothing to optimize: pass a model")
        config = OptimizeConfig(model=model)
    elif model is not None:
        options["model"] = model
    check_known(options)
    for key in ("inputs", "formats", "prune_ratios"):
        if isinstance(options.get(key), (list, str)):
            value = options[key]
            options[key] = tuple(value.split(",") if isinstance(value, str) else value)
    config = replace(config, **options)
    if out_dir is None:
        raise ConfigError("no output folder: pass -o OUTDIR")
    return run(config, Path(out_dir), progress)


def run(config: OptimizeConfig, out_dir: Path, progress: Callable[[dict], None] | None = None) -> OptimizeResult:
    """The search and its outputs. `config.budget_minutes` counts from here; SIGINT/SIGTERM stop the
    search with the best so far (raised as `Stopped` only before the FP32 baseline exists)."""
    import time

    from edgeai.fsutil import ensure_writable_dir, real_dirs
    from edgeai.optimize.cache import Cache
    from edgeai.optimize.lab import PipelineLab
    from edgeai.optimize.report import write_all
    from edgeai.outdir import check_replaceable
    from edgeai.optimize.search import Search
    from edgeai.optimize.stop import signals_stop

    from edgeai.optimize.decoder import is_decoder_config, run_decoder
    if is_decoder_config(config):  # --task text-generation: edgeai/optimize/decoder.py
        return run_decoder(config, out_dir, progress)
    started = time.monotonic()   # the lab's clock
    config.validate()
    ensure_writable_dir(out_dir)
    for name in ("best", "baseline"):  # one edgeai did not write stops the run before it starts
        check_replaceable(out_dir / name)
    cache = Cache(config.cache_dir or real_dirs(out_dir, ".cache"), read=not config.no_cache)
    with signals_stop() as signals:
        lab = PipelineLab(config, cache.work_dir(), teacher_dir=cache.teacher_dir() if cache.read else None)
        try:
            result = Search(config, lab, cache, progress, started=started).run()
            signals.record_only()
        except BaseException:
            lab.close(abort=True)  # stop the builds now and remove their folders
            raise
        lab.close()
        c = result.chosen.candidate
        env = {"cpu": lab.cpu(), "versions": lab.identity()["versions"],
               "device": lab.device_env()}   # None: timed on this machine; else the device's fingerprint
        report = write_all(out_dir, result, _plain(config), env, lab.recipe(c.format, c.steps, c.scheme))
    log.info("chose %s: %s", result.chosen.id, result.why)
    return OptimizeResult(out_dir, result.chosen.id, result.why, report, result.stopped or signals.received)


def _plain(config: OptimizeConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}


class _CallableModule(types.ModuleType):
    """`edgeai.optimize` is this package and the function: `edgeai.optimize(model, out_dir, ...)`."""

    def __call__(self, *args: Any, **kwargs: Any) -> OptimizeResult:
        from edgeai.api import optimize as api_optimize  # module objects and keyword checks, as edgeai.export
        return api_optimize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
