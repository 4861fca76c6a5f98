"""ONNX exporter: torch.export-based (dynamo) first, TorchScript-based as the fallback."""
from __future__ import annotations

import contextlib
import io
import re
import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeai.errors import ConfigError, ExportError, VerificationError
from edgeai.exporters import EXPORTERS, Exporter, ExportResult, interrupts_propagate, output_names
from edgeai.exporters.trace_branches import watch_branches
from edgeai.specs import TensorSpec

log = logging.getLogger(__name__)

EXPORT_PATHS = ("dynamo", "torchscript")
MIN_OPSET = 7  # the oldest opset the exporters and onnxruntime still convert


DECODER_GRAPHS = ("auto", "fused", "traced")


@dataclass(frozen=True)
class OnnxExportConfig:
    exporter: str = "auto"          # "auto" (dynamo, then torchscript), "dynamo" or "torchscript"
    opset: int = 18
    external_data: bool = False     # force weights into model.onnx.data (automatic past 2 GB)
    allow_trace_branches: bool = False  # keep a TorchScript trace whose Python control flow read input values
    decoder_graph: str = "auto"     # decoders: "fused" (onnxruntime's fused ops, written from the weights),
                                    # "traced" (torch.export), "auto" (fused where supported and verified)

    def __post_init__(self):
        if self.exporter not in ("auto", *EXPORT_PATHS):
            raise ConfigError(f"unknown ONNX exporter {self.exporter!r}; known: auto, {', '.join(EXPORT_PATHS)}")
        if not isinstance(self.opset, int) or isinstance(self.opset, bool) or self.opset < MIN_OPSET:
            raise ConfigError(f"ONNX opset must be an integer >= {MIN_OPSET}, got {self.opset!r}")
        if self.decoder_graph not in DECODER_GRAPHS:
            raise ConfigError(f"unknown decoder graph {self.decoder_graph!r}; known: {', '.join(DECODER_GRAPHS)}")
        if not isinstance(self.allow_trace_branches, bool):  # the string "false" would be truthy
            raise ConfigError(f"ONNX export option allow_trace_branches must be true or false, "
                              f"got {self.allow_trace_branches!r}")


def attempts(config: OnnxExportConfig) -> list[OnnxExportConfig]:
    """The export paths to try, in order: 'auto' means torch.export first, TorchScript second."""
    if config.exporter == "auto":
        return [replace(config, exporter=p) for p in EXPORT_PATHS]
    return [config]  # a known path: the config checked it


def export_onnx(module, example_inputs: dict, input_specs: list[TensorSpec], out_path: Path,
                config: OnnxExportConfig) -> ExportResult:
    """Export with the one path config.exporter names ("dynamo" or "torchscript")."""
    import torch

    path = config.exporter

    names = list(example_inputs)
    # fresh tensors: one tensor object passed for two inputs makes the exporter alias them
    args = tuple(example_inputs[n].clone() for n in names)
    with torch.no_grad():
        outputs = module(*args)
    out_names, _ = output_names(outputs)
    out_path = Path(out_path)
    quiet = contextlib.redirect_stdout(io.StringIO())
    branches: list[str] = []  # where a TorchScript trace read input values into Python control flow
    try:
        with interrupts_propagate(), warnings.catch_warnings(), quiet, _quiet_torch_logs():
            warnings.simplefilter("ignore")
            if path == "dynamo":
                args = _grow_size_one_dims(args, input_specs)
                torch.onnx.export(module, args, str(out_path), dynamo=True, input_names=names,
                                  output_names=out_names, opset_version=config.opset,
                                  dynamic_shapes=_dynamic_shapes(input_specs) or None,
                                  external_data=config.external_data, verbose=False, optimize=True)
            else:
                with watch_branches(len(args)) as branches:
                    torch.onnx.export(module, args, str(out_path), dynamo=False, input_names=names,
                                      output_names=out_names, opset_version=min(config.opset, 17),
                                      dynamic_axes=_dynamic_axes(input_specs) or None)
    except Exception as e:  # (an interrupt never gets here: interrupts_propagate raises it)
        raise ExportError(f"{path} ONNX export failed: {root_cause(e)}") from e
    notes = []
    if branches:
        where = ", ".join(branches[:3]) + (f" and {len(branches) - 3} more" if len(branches) > 3 else "")
        if not config.allow_trace_branches:
            raise VerificationError(
                f"the trace fixed Python control flow on input values at {where}: the artifact always takes the "
                "branch the example inputs took; use torch.where/torch.cond there, or if every input takes that "
                "branch pass --allow-trace-branches (export option allow_trace_branches) and --eval-data to "
                "verify on real samples")
        notes.append(f"TorchScript trace fixed Python control flow on input values at {where} "
                     "(allow_trace_branches): the artifact follows the branch of the example inputs")
    if path == "dynamo":
        _drop_initializer_value_info(out_path)
    files = [out_path.name] + external_files(out_path)
    details = {"opset": _opset(out_path), "export_path": path, "op_histogram": op_histogram(out_path)}
    if branches:
        details["trace_branches"] = branches
    return ExportResult(exporter=f"torch.onnx ({'torch.export' if path == 'dynamo' else 'TorchScript'})",
                        files=files, details=details, notes=notes)


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch.onnx logs warnings (e.g. 'torchvision is not installed') that are not the user's concern."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def root_cause(e: BaseException, limit: int = 300) -> str:
    """The innermost exception's message, on one line without terminal colours."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    text = " ".join(text.split())
    return f"{type(e).__name__}: {text[:limit]}"


def _dynamic_shapes(specs: list[TensorSpec]) -> dict:
    import torch
    dims: dict[str, Any] = {}
    shapes = {}
    for spec in specs:
        axes = {i: dims.setdefault(d, torch.export.Dim(d)) for i, d in enumerate(spec.shape) if isinstance(d, str)}
        shapes[spec.name] = axes or None
    return shapes if any(v for v in shapes.values()) else {}


def _dynamic_axes(specs: list[TensorSpec]) -> dict:
    return {s.name: {i: d for i, d in enumerate(s.shape) if isinstance(d, str)}
            for s in specs if s.dynamic_dims}


def _grow_size_one_dims(args: tuple, specs: list[TensorSpec]) -> tuple:
    """torch.export specialises dynamic dims of size 1; trace with size 2 (values are irrelevant)."""
    out = []
    for arg, spec in zip(args, specs):
        for axis, d in enumerate(spec.shape):
            if isinstance(d, str) and arg.shape[axis] == 1:
                arg = arg.repeat_interleave(2, dim=axis)
        out.append(arg)
    return tuple(out)


def _drop_initializer_value_info(model_path: Path) -> None:
    """torch.export-based graphs repeat each initializer's shape in value_info; onnxruntime's
    quantizer transposes Gemm weights in place, and the stale copy then fails shape inference."""
    import onnx
    model = onnx.load(str(model_path), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    keep = [vi for vi in model.graph.value_info if vi.name not in weights]
    if len(keep) == len(model.graph.value_info):
        return
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    onnx.save(model, str(model_path))  # external data stays where it is: only references were loaded


def external_files(model_path: Path) -> list[str]:
    """Names of external-data files the ONNX model refers to (weights stored beside it)."""
    import onnx
    model = onnx.load(str(model_path), load_external_data=False)
    names = []
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in init.external_data if e.key == "location"), None)
            if loc and loc not in names:
                names.append(loc)
    return names


def copy_model(src: Path, dst: Path) -> list[str]:
    """Copy the ONNX model `src` to `dst`; the names of the files written beside `dst` (its external data).

    A model without external data is copied byte for byte. External data, whatever `src` calls it
    ('./w.bin', 'data/w.bin', 'manifest.json', several files), is gathered into one file
    `<dst.name>.data` beside `dst`, and `dst` names it: an export folder only ever holds plain
    names it chose. Data that lies outside `src`'s folder is refused (ExportError).
    """
    import shutil

    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    model = onnx.load(str(src), load_external_data=False)
    tensors = [t for t in _get_all_tensors(model) if uses_external_data(t)]
    if not tensors:
        shutil.copyfile(src, dst)
        return []
    data_name = f"{dst.name}.data"
    with open(dst.parent / data_name, "xb") as out:
        for tensor in tensors:
            info = {e.key: e.value for e in tensor.external_data}
            data = _read_external(src, info)
            offset = out.tell()
            out.write(data)
            del tensor.external_data[:]
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(data)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    onnx.save(model, str(dst))  # only the references were loaded: the data stays where it was written
    return [data_name]


def _read_external(src: Path, info: dict[str, str]) -> bytes:
    """The bytes of one external tensor of `src` (location, offset, length), from inside src's folder."""
    location = info.get("location", "")
    folder = src.parent.resolve()
    path = (src.parent / location).resolve()
    if not location or Path(location).is_absolute() or path.parent != folder and folder not in path.parents:
        raise ExportError(f"{str(src)!r} keeps weights in {location!r}, outside its folder; edgeai reads "
                          "external data only from the model's own folder")
    try:
        with open(path, "rb") as f:
            f.seek(int(info.get("offset") or 0))
            length = info.get("length")
            data = f.read(int(length)) if length else f.read()
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read the external data {location!r} of {str(src)!r}: "
                          f"{getattr(e, 'strerror', None) or e}") from None
    if length and len(data) != int(length):
        raise ExportError(f"the external data {location!r} of {str(src)!r} is shorter than the model says")
    return data


def op_histogram(model_path: Path) -> dict[str, int]:
    import onnx
    model = onnx.load(str(model_path), load_external_data=False)
    hist: dict[str, int] = {}
    for node in model.graph.node:
        hist[node.op_type] = hist.get(node.op_type, 0) + 1
    return dict(sorted(hist.items(), key=lambda kv: -kv[1]))


def _opset(model_path: Path) -> int:
    import onnx
    model = onnx.load(str(model_path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


EXPORTERS.add("onnx", Exporter(format="onnx", suffix=".onnx", config_cls=OnnxExportConfig, fn=export_onnx,
                                attempts=attempts))
