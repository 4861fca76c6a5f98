"""TFLite exporter through litert-torch (no TensorFlow): named I/O, optional channels-last I/O, graph facts."""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from edgeai.errors import ExportError, MissingDependencyError
from edgeai.exporters import EXPORTERS, Exporter, ExportResult, flatten_outputs, interrupts_propagate, output_names
from edgeai.extras import install_command

if TYPE_CHECKING:
    import torch

    from edgeai.specs import TensorSpec

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class TFLiteExportConfig:
    """Options of the litert-torch export.

    channels_last_io: rank-4 inputs (and rank-4 outputs) are NHWC in the .tflite file; the model
        permutes them back to the torch layout inside, where the converter folds the permute into
        its own NCHW->NHWC transposes.
    dynamic_dims: keep the input specs' named dims dynamic (-1 in the .tflite). litert-torch 0.10
        lowers this for plain CNNs only; off (default), every dim is fixed at the example shape.
    fuse_lstm: emit each nn.LSTM as one fused UNIDIRECTIONAL_SEQUENCE_LSTM op instead of the
        per-time-step ops litert-torch unrolls it into (see edgeai/export/tflite_lstm.py).
    """

    channels_last_io: bool = False
    dynamic_dims: bool = False
    fuse_lstm: bool = False


def _import_litert_torch():
    try:
        import litert_torch
    except ImportError:
        raise MissingDependencyError(f"TFLite export needs litert-torch; run: {install_command('tflite')}") from None
    return litert_torch


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """litert-torch prints a progress tree to the terminal; show it only when debugging."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    old = os.environ.get(key)
    os.environ[key] = "y" if log.isEnabledFor(logging.DEBUG) else "n"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _nchw_to_nhwc(shape: tuple) -> tuple:
    return (shape[0], *shape[2:], shape[1])


def _io_wrapper(module: "torch.nn.Module", names: list[str], out_names: list[str],
                nhwc_in: set[str], nhwc_out: set[int]) -> "torch.nn.Module":
    """A module taking the inputs by name (the .tflite signature names) and returning a dict of outputs."""
    import torch

    class NamedIO(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, *args, **kwargs):
            kwargs.update(zip(names, args))
            # NHWC -> NCHW for the inputs exported channels-last
            xs = [kwargs[n].permute(0, 3, 1, 2) if n in nhwc_in else kwargs[n] for n in names]
            leaves = flatten_outputs(self.inner(*xs))
            # NCHW -> NHWC for rank-4 outputs when exporting channels-last
            return {o: (t.permute(0, 2, 3, 1) if i in nhwc_out else t)
                    for i, (o, t) in enumerate(zip(out_names, leaves))}

    if all(n.isidentifier() for n in names):  # lets torch.export bind dynamic_shapes by input name
        params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ["self", *names]]
        NamedIO.forward.__signature__ = inspect.Signature(params)
    return NamedIO()


def _rnn_layers(module: "torch.nn.Module") -> dict[str, int]:
    """Recurrent layer count (layers x directions) per RNN class in `module`."""
    import torch

    counts: dict[str, int] = {}
    for m in module.modules():
        if isinstance(m, torch.nn.RNNBase):
            name = type(m).__name__
            counts[name] = counts.get(name, 0) + m.num_layers * (2 if m.bidirectional else 1)
    return counts


def export_tflite(module: "torch.nn.Module", example_inputs: "dict[str, torch.Tensor]",
                  input_specs: "list[TensorSpec]", out_path: Path, config: TFLiteExportConfig) -> ExportResult:
    """Convert `module` to a .tflite file at `out_path` with litert-torch; the pipeline verifies it."""
    litert_torch = _import_litert_torch()
    import torch

    from edgeai.runtime.tflite_inspect import inspect_tflite
    from edgeai.specs import TensorSpec

    module = module.eval()
    names = list(example_inputs)
    specs = {s.name: s for s in input_specs}
    notes: list[str] = []
    nhwc_in: set[str] = set()
    if config.channels_last_io:
        nhwc_in = {n for n, t in example_inputs.items() if t.ndim == 4 and t.is_floating_point()}
        if not nhwc_in:
            raise ExportError("channels_last_io=True needs a rank-4 float image input (N,C,H,W); inputs are "
                              + ", ".join(f"{n}{tuple(t.shape)}" for n, t in example_inputs.items())
                              + "; export without channels_last_io")
    with torch.no_grad():
        ref_out = module(*example_inputs.values())
    out_names, out_leaves = output_names(ref_out)
    nhwc_out = {i for i, t in enumerate(out_leaves) if config.channels_last_io and t.ndim == 4}
    wrapper = _io_wrapper(module, names, out_names, nhwc_in, nhwc_out).eval()
    # the example inputs in the layout the .tflite takes: NCHW -> NHWC where exported channels-last
    sample = {n: (t.permute(0, 2, 3, 1).contiguous() if n in nhwc_in else t) for n, t in example_inputs.items()}
    dynamic_shapes = _dynamic_shapes(names, specs, sample, nhwc_in) if config.dynamic_dims else None

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    exclude: dict[str, str] = {}  # LSTMs to leave unrolled, with the reason
    while True:
        fused: list[dict] = []
        try:
            with interrupts_propagate():
                _convert(litert_torch, wrapper, sample, dynamic_shapes, out_path, module, config, fused, exclude)
            break
        except (MissingDependencyError, ExportError):
            raise
        except Exception as e:
            reads_c = _cell_state_user(e) if config.fuse_lstm else None
            if reads_c and reads_c not in exclude:  # convert again with that LSTM unrolled
                exclude[reads_c] = "the model reads its final cell state c_n, which the fused op does not output"
                continue
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:400]
            hint = ("; litert-torch cannot keep these dims dynamic: export with dynamic_dims=False (fixed shapes)"
                    if config.dynamic_dims else "")
            raise ExportError(f"litert-torch could not convert the model: {type(e).__name__}: {first}{hint}") from None

    info = inspect_tflite(out_path)
    rnn_layers = _rnn_layers(module)
    fused_ops = sum(info["fused_rnn_ops"].values())
    unrolled = fused_ops < sum(rnn_layers.values())
    if unrolled:
        notes.append(f"the recurrent layers ({', '.join(sorted(rnn_layers))}) were unrolled over time into "
                     f"{info['op_count']} TFLite ops ({fused_ops} fused sequence ops for "
                     f"{sum(rnn_layers.values())} recurrent layers); the graph is fixed to the example "
                     "sequence length and runs slower than a fused kernel"
                     + ("" if config.fuse_lstm else "; for nn.LSTM try fuse_lstm=True"))
    for entry in fused:
        if not entry["fused"]:
            notes.append(f"nn.LSTM {entry['module']!r} was not fused: {entry['reason']}")
    if config.fuse_lstm and not fused:
        notes.append("fuse_lstm=True but the model has no nn.LSTM")
    if info["variable_tensors"]:
        notes.append("the fused LSTM keeps its state in variable tensors that persist between runs: reset "
                     "them before each inference (edgeai's TFLiteSession does; LiteRT Python: "
                     "interpreter.reset_all_variables(); C++: ResetVariableTensors())")
    if not config.dynamic_dims and any(s.dynamic_dims for s in input_specs):
        fixed = ", ".join(f"{n}{tuple(sample[n].shape)}" for n in names)
        notes.append(f"TFLite model has fixed shapes ({fixed}); the named dims of the input specs were "
                     "fixed at their example sizes")
    has_image = any(t.ndim == 4 for t in example_inputs.values())
    layout = "NHWC" if nhwc_in else ("NCHW" if has_image else None)  # None: no rank-4 input
    in_specs = []
    tfl_dtypes = {d["name"]: d["dtype"] for d in info["inputs"]}
    for n in names:
        spec = specs.get(n)
        shape = tuple(spec.shape) if spec is not None and config.dynamic_dims else tuple(example_inputs[n].shape)
        if n in nhwc_in:
            shape = _nchw_to_nhwc(shape)
        torch_dtype = str(example_inputs[n].dtype).removeprefix("torch.")
        dtype = tfl_dtypes.get(n, torch_dtype)
        if dtype != torch_dtype:  # litert-torch narrows 64-bit I/O (int64 -> int32, float64 -> float32)
            notes.append(f"input {n!r} is {dtype} in the .tflite file ({torch_dtype} in torch)")
        in_specs.append(TensorSpec(n, shape, dtype).to_dict())
    details = {
        "op_count": info["op_count"],
        "op_histogram": info["op_histogram"],
        "transpose_count": info["transpose_count"],
        "input_layout": layout,
        "channels_last_inputs": sorted(nhwc_in),
        "channels_last_outputs": [out_names[i] for i in sorted(nhwc_out)],
        "unrolled_rnn": unrolled,
        "fused_rnn_ops": info["fused_rnn_ops"],
        "fused_lstm": fused,
        "stateful": info["variable_tensors"] > 0,
        "static_shapes": not config.dynamic_dims,
        "inputs": in_specs,
        "outputs": [{"name": o["name"], "shape": o["shape_signature"], "dtype": o["dtype"]}
                    for o in info["outputs"]],
        "size_bytes": info["size_bytes"],
    }
    return ExportResult(exporter=f"litert-torch {litert_torch.__version__}", files=[out_path.name],
                        details=details, notes=notes)


def _convert(litert_torch, wrapper, sample, dynamic_shapes, out_path: Path, module, config, fused, exclude) -> None:
    import torch

    if config.fuse_lstm:
        from edgeai.exporters.tflite_lstm import fuse_lstm_context
        lstm_ctx = fuse_lstm_context(module, fused, exclude)
    else:
        lstm_ctx = contextlib.nullcontext()
    with _quiet_progress(), lstm_ctx, torch.no_grad(), warnings.catch_warnings():
        # known noise of torch.export on nn.LSTM and of litert-torch's pytree use
        warnings.filterwarnings("ignore", message=r".*were assigned during export.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        edge_model = litert_torch.convert(wrapper, sample_kwargs=sample, dynamic_shapes=dynamic_shapes)
        edge_model.export(str(out_path))


def _cell_state_user(exc: BaseException) -> str | None:
    from edgeai.exporters.tflite_lstm import CellStateUsed

    return CellStateUsed.find(exc)


def _dynamic_shapes(names, specs, sample, nhwc_in) -> dict:
    """torch.export dynamic_shapes by input name from the specs' named dims (one Dim per name)."""
    from torch.export import Dim

    if not all(n.isidentifier() for n in names):
        raise ExportError("dynamic_dims=True needs input names that are Python identifiers; got "
                          f"{names}; rename the inputs or export with fixed shapes")
    dims: dict[str, Any] = {}
    out = {}
    for n in names:
        spec = specs.get(n)
        shape = tuple(spec.shape) if spec is not None else ()
        if n in nhwc_in and shape:
            shape = _nchw_to_nhwc(shape)
        out[n] = {i: dims.setdefault(d, Dim(d)) for i, d in enumerate(shape) if isinstance(d, str)} or None
    return out


EXPORTERS.add("tflite", Exporter(format="tflite", suffix=".tflite", config_cls=TFLiteExportConfig, fn=export_tflite,
                                  fixed_shapes=lambda config: not config.dynamic_dims))
