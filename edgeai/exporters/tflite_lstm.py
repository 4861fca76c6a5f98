"""Fused LSTM for the TFLite export: each nn.LSTM layer becomes one UNIDIRECTIONAL_SEQUENCE_LSTM op.

litert-torch unrolls nn.LSTM over time (thousands of ops). Here, during conversion only, each
fusable nn.LSTM runs through a torch custom op `edgeai::tflite_lstm` whose litert-torch lowering
emits `tfl.unidirectional_sequence_lstm` directly into the MLIR module. TFLite keeps the op's
h/c state in *variable* tensors that persist across invocations, so a runtime must reset them
before each inference (TFLiteSession does; in C++ call ResetVariableTensors()).
Torch and litert-torch are imported inside the functions (this module is imported at exporter discovery).
"""
from __future__ import annotations

import contextlib
import functools
import logging
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class CellStateUsed(Exception):
    """The model reads an LSTM's final cell state c_n, which TFLite's fused op does not output."""

    MARK = "edgeai-fused-lstm-reads-c_n:"

    def __init__(self, module: str):
        super().__init__(f"{self.MARK}{module}")
        self.module = module

    @classmethod
    def find(cls, exc: BaseException) -> str | None:
        """The module name if `exc` (or what it wraps) comes from a used c_n, else None."""
        seen = set()
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            text = str(exc)
            if cls.MARK in text:
                return text.split(cls.MARK, 1)[1].split()[0].strip("'\"),;")
            exc = exc.__cause__ or exc.__context__
        return None


@functools.cache
def _register_op() -> None:
    """Define the custom op, its fake kernel and its litert-torch lowering (once per process)."""
    import torch
    from litert_converter.mlir import ir
    from litert_converter.mlir.dialects import stablehlo
    from litert_torch.backend import lowerings
    from litert_torch.backend.lowerings import utils as lowering_utils

    schema = ("(Tensor x, Tensor w_i, Tensor w_f, Tensor w_g, Tensor w_o, Tensor r_i, Tensor r_f, "
              "Tensor r_g, Tensor r_o, Tensor b_i, Tensor b_f, Tensor b_g, Tensor b_o, bool batch_first) -> Tensor")

    @torch.library.custom_op("edgeai::tflite_lstm", mutates_args=(), schema=schema)
    def tflite_lstm(x, w_i, w_f, w_g, w_o, r_i, r_f, r_g, r_o, b_i, b_f, b_g, b_o, batch_first):
        """One LSTM layer from zero state: gates in PyTorch/TFLite order (input, forget, cell, output)."""
        batch = x.shape[0] if batch_first else x.shape[1]
        zeros = x.new_zeros(1, batch, w_i.shape[0])
        params = [torch.cat([w_i, w_f, w_g, w_o]), torch.cat([r_i, r_f, r_g, r_o]),
                  torch.cat([b_i, b_f, b_g, b_o]), torch.zeros_like(torch.cat([b_i, b_f, b_g, b_o]))]
        out, _, _ = torch.lstm(x, (zeros, zeros), params, True, 1, 0.0, False, False, batch_first)
        return out

    @tflite_lstm.register_fake
    def _(x, w_i, *rest):
        return x.new_empty((x.shape[0], x.shape[1], w_i.shape[0]))

    @torch.library.custom_op("edgeai::tflite_lstm_cell_state", mutates_args=(), schema="(Tensor c, str module) -> Tensor")
    def cell_state(c, module):
        """Marks the final cell state c_n: unused, torch.export drops it; used, its lowering refuses."""
        return c.clone()

    @cell_state.register_fake
    def _(c, module):
        return torch.empty_like(c)

    @lowerings.lower(torch.ops.edgeai.tflite_lstm_cell_state)
    def _lower_cell_state(lctx, c, module):
        raise CellStateUsed(module)

    @lowerings.lower(torch.ops.edgeai.tflite_lstm)
    def _lower(lctx, x, w_i, w_f, w_g, w_o, r_i, r_f, r_g, r_o, b_i, b_f, b_g, b_o, batch_first):
        f32 = ir.F32Type.get()
        x_shape = ir.RankedTensorType(x.type).shape
        batch, hidden = (x_shape[0] if batch_first else x_shape[1]), ir.RankedTensorType(w_i.type).shape[0]

        def zero_state():  # becomes a variable tensor: TFLite's op reads and writes its state there
            ty = ir.RankedTensorType.get([batch, hidden], f32)
            return stablehlo.constant(ir.DenseElementsAttr.get_splat(ty, ir.FloatAttr.get(f32, 0.0)))

        def none():  # an absent optional operand
            return ir.Operation.create("tfl.no_value", results=[ir.NoneType.get()],
                                       attributes={"value": ir.UnitAttr.get()}).results[0]

        # operand order of TFLite's UNIDIRECTIONAL_SEQUENCE_LSTM: input, 4 input weights, 4 recurrent
        # weights, 3 peepholes, 4 gate biases, projection weight+bias, output/cell state, 4 layer norms
        operands = [x, w_i, w_f, w_g, w_o, r_i, r_f, r_g, r_o, none(), none(), none(),
                    b_i, b_f, b_g, b_o, none(), none(), zero_state(), zero_state(),
                    none(), none(), none(), none()]
        op = ir.Operation.create(
            "tfl.unidirectional_sequence_lstm",
            results=lowering_utils.node_meta_to_ir_types(lctx.node)[:1], operands=operands,
            attributes={"fused_activation_function": ir.StringAttr.get("TANH"),
                        "cell_clip": ir.FloatAttr.get(f32, 0.0), "proj_clip": ir.FloatAttr.get(f32, 0.0),
                        "time_major": ir.BoolAttr.get(not batch_first)})
        return op.results[0]


def why_not_fusable(lstm: "torch.nn.LSTM") -> str | None:
    """None when the layer maps onto TFLite's fused op, else the reason it stays unrolled."""
    import torch

    if lstm.bidirectional:
        return "bidirectional"
    if lstm.proj_size:
        return "proj_size > 0"
    if any(p.dtype != torch.float32 for p in lstm.parameters()):
        return "weights are not float32"
    return None


def _fused_forward(lstm: "torch.nn.LSTM", original, skipped: list[str], name: str):
    import torch

    def forward(x, hx=None):
        if hx is not None or not isinstance(x, torch.Tensor) or x.ndim != 3:
            # initial states, packed or unbatched sequences: TFLite's op starts from its zero state
            skipped.append(f"{name}: called with an initial state, a packed or an unbatched sequence")
            return original(x, hx)
        out, last = x, []
        for k in range(lstm.num_layers):
            w = getattr(lstm, f"weight_ih_l{k}").chunk(4)
            r = getattr(lstm, f"weight_hh_l{k}").chunk(4)
            if lstm.bias:
                b = (getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")).chunk(4)
            else:
                b = x.new_zeros(4 * lstm.hidden_size).chunk(4)
            out = torch.ops.edgeai.tflite_lstm(out, *w, *r, *b, lstm.batch_first)
            last.append(out[:, -1] if lstm.batch_first else out[-1])
        h_n = torch.stack(last)  # (layers, batch, hidden): the last step of each layer's output
        # TFLite's op does not output the final cell state c_n: take it from the unrolled LSTM behind a
        # marker op; when the model ignores c_n torch.export drops both, else the lowering refuses
        c_n = torch.ops.edgeai.tflite_lstm_cell_state(original(x)[1][1], name)
        return out, (h_n, c_n)

    return forward


@contextlib.contextmanager
def fuse_lstm_context(module: "torch.nn.Module", fused: list[dict],
                      exclude: dict[str, str] | None = None) -> Iterator[None]:
    """While active, fusable nn.LSTM submodules of `module` run through the fused-op path.

    Appends one {"module", "layers", "hidden", "fused", "reason"?} dict per nn.LSTM to `fused`;
    `exclude` maps module names to keep unrolled to the reason.
    """
    import torch

    _register_op()
    patched: list[torch.nn.Module] = []
    skipped: list[str] = []
    try:
        for name, sub in module.named_modules():
            if not isinstance(sub, torch.nn.LSTM):
                continue
            name = name or "(root)"
            reason = (exclude or {}).get(name) or why_not_fusable(sub)
            entry = {"module": name, "layers": sub.num_layers, "hidden": sub.hidden_size}
            if reason:
                fused.append({**entry, "fused": False, "reason": reason})
                continue
            sub.forward = _fused_forward(sub, sub.forward, skipped, name)
            patched.append(sub)
            fused.append({**entry, "fused": True})
        yield
    finally:
        for sub in patched:
            del sub.forward  # back to the class's forward
    for msg in skipped:
        for entry in fused:
            if msg.startswith(entry["module"] + ":"):
                entry.update(fused=False, reason=msg.split(": ", 1)[1])
