"""What `edgeai optimize` is asked: the model, its data, the accuracy budget, the objective and the limits."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from edgeai.errors import ConfigError

OBJECTIVES = ("p50", "p90", "size", "ttft")   # ttft: decoders only (--task text-generation)
FORMATS = ("onnx", "tflite")
DEFAULT_RATIOS_DISTILL = (0.5, 0.7, 0.85)   # with --train-data: screened, the best distilled longer
DEFAULT_RATIOS_PLAIN = (0.25, 0.5)     # pruning alone loses accuracy fast


def installed_formats(model: str = "") -> tuple[str, ...]:
    """ONNX, and TFLite when its extra is installed (litert-torch to export, ai-edge-litert to run) and
    the model is a PyTorch one (an .onnx file is searched in ONNX only). Checked without importing."""
    import importlib.util

    tflite = all(importlib.util.find_spec(m) is not None for m in ("litert_torch", "ai_edge_litert"))
    return ("onnx", "tflite") if tflite and not model.endswith(".onnx") else ("onnx",)


@dataclass(frozen=True)
class OptimizeConfig:
    model: str
    eval_data: str | None = None           # .npz / folder / module:function, with optional labels
    max_drop: float | None = None          # in the metric's units (top-1 points, cosine, or the user metric)
    inputs: tuple[str, ...] = ()
    example_inputs: str | None = None
    arch: str | None = None
    trust_pickle: bool = False
    dynamic_batch: bool = True
    metric: str | None = None              # FILE.py:FUNC or module:FUNC, FUNC(outputs, labels) -> float
    calibration: str | None = None
    train_data: str | None = None
    formats: tuple[str, ...] = ()          # (): every format whose extra is installed (installed_formats)
    export: Mapping[str, Any] = field(default_factory=dict)    # exporter options, as in a recipe
    objective: str = "p50"
    budget_minutes: float = 30.0
    threads: int = 1
    max_size_mb: float | None = None
    max_rss_mb: float | None = None
    prune_ratios: tuple[float, ...] | None = None   # None: DEFAULT_RATIOS_*; () turns pruning off
    distill: Mapping[str, Any] = field(default_factory=dict)   # distill step options (epochs, max_minutes, ...)
    rounds: int = 3                        # interleaved timing rounds
    min_seconds: float = 1.0               # timed seconds per candidate per round
    workers: int = 1                       # parallel builds (exports, calibration, distillation)
    ray: str | None = None                 # Ray cluster address for the builds
    cache_dir: str | None = None           # default OUTDIR/.cache
    no_cache: bool = False
    task: str | None = None                # hf: models: the Optimum task (default: read from config.json)
    device: str | None = None              # ssh://[USER@]HOST[:PORT]: time there, build here (None: this machine)
    ssh_config: str | None = None          # read before ~/.ssh/config, as for `edgeai bench`
    device_python: str | None = None       # the device's Python that has edgeai installed

    def __post_init__(self) -> None:
        if not self.formats:
            object.__setattr__(self, "formats", installed_formats(self.model))

    def validate(self) -> None:
        if not self.eval_data:
            raise ConfigError("optimize needs evaluation data to score every candidate: pass --eval-data E.npz")
        if self.max_drop is None or not (self.max_drop >= 0 and math.isfinite(self.max_drop)):
            raise ConfigError(f"--max-drop must be >= 0 in the metric's units, got {self.max_drop}")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ConfigError(f"unknown format(s) {bad or '(none)'}; known: {', '.join(FORMATS)}")
        if len(set(self.formats)) != len(self.formats):
            raise ConfigError(f"--format lists a format twice: {','.join(self.formats)}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; known: {', '.join(OBJECTIVES)}")
        if self.objective == "ttft":
            raise ConfigError("--objective ttft (time to first token) is for decoders: add --task text-generation")
        for name in ("threads", "rounds", "workers"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("budget_minutes", "min_seconds", "max_size_mb", "max_rss_mb"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):  # nan would turn the limit off
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0 and finite, got {value}")
        if any(not 0 < r < 1 for r in self.prune_ratios or ()):
            raise ConfigError(f"--prune-ratios are fractions of MACs to remove, each between 0 and 1, "
                              f"got {list(self.prune_ratios)}")
        self.timing_device()  # a bad --device is bad input: fail before building anything
        if (not self.inputs and not self.example_inputs and not self.model.endswith(".onnx")
                and not self.model.startswith("hf:")):  # an hf: model's inputs come from Optimum
            raise ConfigError("optimize needs the model's inputs: pass --input NAME:DIMS or --example-inputs X.npz")

    def timing_device(self):
        """The SshDevice candidates are timed on, or None for this machine (edgeai.bench.devices)."""
        from edgeai.bench.devices import DeviceError, SshDevice, parse_device

        if self.device and not self.device.startswith(("ssh://", "local")):
            raise DeviceError(f"optimize times candidates with edgeai on the device: --device must be "
                              f"ssh://HOST, got {self.device!r}")
        device = parse_device(self.device, ssh_config=self.ssh_config, device_python=self.device_python)
        assert device is None or isinstance(device, SshDevice), device
        return device

    @property
    def ratios(self) -> tuple[float, ...]:
        if self.prune_ratios is not None:
            return tuple(self.prune_ratios)
        return DEFAULT_RATIOS_DISTILL if self.train_data else DEFAULT_RATIOS_PLAIN


def check_known(options: Mapping[str, Any]) -> None:
    """ConfigError for keywords that are not OptimizeConfig fields, naming the known ones."""
    known = {f.name for f in fields(OptimizeConfig)}
    bad = set(options) - known
    if bad:
        raise ConfigError(f"unknown optimize option(s) {sorted(bad)}; known: {', '.join(sorted(known))}")
