"""A model file never reaches the filesystem: TorchScript code and .pt2 graphs are checked against an operator
allowlist before torch loads or runs them; a TorchScript trace cannot hide a branch on input values."""
import json
import zipfile
from typing import Tuple

import numpy as np
import pytest
import torch
from torch import nn

import models
from conftest import factory
from edgeai.errors import ModelLoadError
from edgeai.recipe import SummaryConfig


def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("edgeai: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------- crafted archives

class _SetstateWriter(nn.Module):
    """Loading it (torch.jit.load runs __setstate__) maps `path` shared and writes 8 bytes into it."""

    def __init__(self, path):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.path = str(path)

    def forward(self, x):
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool, str]:
        return (self.w, self.training, self.path)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool, str]):
        t = torch.from_file(state[2], True, 8, dtype=torch.uint8)
        t.copy_(torch.full([8], 66, dtype=torch.uint8))
        self.w = state[0] + t[:1].float() * 0
        self.training = state[1]
        self.path = state[2]


class _FileReader(nn.Module):
    """Its forward reads the first bytes of `path` into the output (and so into an exported ONNX)."""

    def __init__(self, path):
        super().__init__()
        self.path = str(path)

    def forward(self, x):
        t = torch.from_file(self.path, False, 8, dtype=torch.uint8)
        return x + t[:3].float()


class _EmptyFill(nn.Module):
    """The clean graph the .pt2 payload is made from: its `empty` node becomes aten.from_file(shared=True)."""

    def forward(self, x):
        t = torch.empty(8, dtype=torch.uint8)
        t.fill_(65)
        return x + t[:1].float() * 0


def _setstate_ts(tmp_path, marker):
    path = tmp_path / "setstate.pt"
    torch.jit.script(_SetstateWriter(marker)).save(str(path))
    marker.unlink(missing_ok=True)  # scripting does not run __setstate__, but be sure
    return path


def _reader_ts(tmp_path, secret):
    path = tmp_path / "reader.pt"
    torch.jit.script(_FileReader(secret)).save(str(path))
    return path


def _from_file_pt2(tmp_path, marker):
    base, path = tmp_path / "base.pt2", tmp_path / "writer.pt2"
    torch.export.save(torch.export.export(_EmptyFill(), (torch.randn(2, 3),)), str(base))

    def patch(rel, data):
        if rel != "models/model.json":
            return data
        program = json.loads(data)
        node = program["graph_module"]["graph"]["nodes"][0]
        assert node["target"] == "torch.ops.aten.empty.memory_format"
        node["target"] = "torch.ops.aten.from_file.default"
        node["inputs"] = [{"name": "filename", "arg": {"as_string": str(marker)}, "kind": 1},
                          {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
                          {"name": "size", "arg": {"as_int": 8}, "kind": 1},
                          {"name": "dtype", "arg": {"as_scalar_type": 1}, "kind": 2}]
        return json.dumps(program).encode()
    return _rewrite(base, path, patch)


def _rewrite(src, dst, patch):
    """Copy the zip archive `src` to `dst`, passing each record through patch(relative name, bytes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, patch(info.filename.split("/", 1)[1], zin.read(info.filename)))
    return dst


def test_crafted_archives_really_write_and_read_files_when_torch_loads_them(tmp_path):
    """What the refusals below stop: plain torch.jit.load / torch.export.load + a call do the damage."""
    marker = tmp_path / "marker"
    torch.jit.load(str(_setstate_ts(tmp_path, marker)))
    assert marker.read_bytes() == b"B" * 8
    marker.unlink()
    torch.export.load(str(_from_file_pt2(tmp_path, marker))).module()(torch.randn(2, 3))
    assert marker.read_bytes() == b"A" * 8
    secret = tmp_path / "secret"
    secret.write_bytes(bytes([7, 8, 9]) + b"\0" * 5)
    out = torch.jit.load(str(_reader_ts(tmp_path, secret)))(torch.zeros(1, 3))
    assert out.tolist() == [[7.0, 8.0, 9.0]]


CRAFTED = {"setstate": _setstate_ts, "reader": _reader_ts, "pt2": _from_file_pt2}


@pytest.mark.parametrize("command", ["export", "bench"])
@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_crafted_archive_is_refused_naming_the_operator_and_touches_no_file(cli, tmp_path, kind, command):
    marker = tmp_path / "marker"
    if kind == "reader":
        marker.write_bytes(b"secret!!")
    before = marker.read_bytes() if marker.exists() else None
    model = CRAFTED[kind](tmp_path, marker)
    if command == "export":
        code, _, err = cli("export", model, "--input", "x:batch,3", "-o", tmp_path / "out")
    else:
        code, _, err = cli("bench", model, "--runtime", "torch", "--input", "x:2,3", "--runs", "2", "--warmup", "0")
    _one_line_error(code, err, "aten::from_file", model.name, "--trust-pickle")
    assert (marker.read_bytes() if marker.exists() else None) == before
    assert not (tmp_path / "out").exists()


def test_trust_pickle_lets_a_refused_torchscript_load(cli, tmp_path):
    marker = tmp_path / "marker"
    model = _setstate_ts(tmp_path, marker)
    code, _, err = cli("export", model, "--input", "x:batch,3", "-o", tmp_path / "out", "--no-bench",
                       "--trust-pickle")
    assert code == 0, err
    assert marker.read_bytes() == b"B" * 8  # what --trust-pickle opens: the file's code ran


@pytest.fixture(scope="module")
def clean_ts(tmp_path_factory):
    """A TorchScript CNN (traced) and LSTM (scripted): the code torch itself writes."""
    root = tmp_path_factory.mktemp("ts")
    torch.jit.trace(models.cnn(), torch.randn(2, 3, 16, 16)).save(str(root / "cnn.pt"))
    torch.jit.script(models.lstm()).save(str(root / "lstm.pt"))
    return root


CLEAN = {"cnn": "image:batch,3,16,16", "lstm": "rows:batch,5,6", "encoder": "tokens:batch,5,32"}
EXAMPLE = {"cnn": (2, 3, 16, 16), "lstm": (2, 5, 6), "encoder": (2, 5, 32)}


@pytest.mark.parametrize("name", ["cnn", "lstm"])
def test_clean_torchscript_passes_the_check_and_exports(clean_ts, tmp_path, name):
    import edgeai
    from edgeai import runtime
    outcome = edgeai.export(str(clean_ts / f"{name}.pt"), tmp_path / "out", inputs=[CLEAN[name]], summary=SummaryConfig(bench=False))
    x = np.random.default_rng(0).standard_normal(EXAMPLE[name]).astype(np.float32)
    with torch.inference_mode():
        ref = torch.jit.load(str(clean_ts / f"{name}.pt"))(torch.from_numpy(x)).numpy()
    session = runtime.load(tmp_path / "out")
    got = session.run({session.inputs[0].name: x})[session.outputs[0].name]
    assert outcome.artifacts[0].parity["passed"] and np.abs(got - ref).max() < 1e-4


def test_scripted_transformers_pass_the_check(tmp_path):
    """Scripted nn.TransformerEncoder / MultiheadAttention: the largest code torch writes (the ONNX exporter
    cannot convert a loaded TorchScript encoder, aten::is_autocast_enabled, so only the check runs here)."""
    from edgeai.source import check_model_file
    for name in ("tiny_encoder", "text_transformer"):
        torch.jit.script(getattr(models, name)()).save(str(tmp_path / f"{name}.pt"))
        assert check_model_file(tmp_path / f"{name}.pt") == "torchscript"


@pytest.mark.parametrize("name", sorted(CLEAN))
def test_clean_pt2_passes_the_check_and_exports(tmp_path, name):
    import edgeai
    module = {"cnn": models.cnn, "lstm": models.lstm, "encoder": models.tiny_encoder}[name]()
    torch.export.save(torch.export.export(module, (torch.randn(*EXAMPLE[name]),)), str(tmp_path / "m.pt2"))
    static = CLEAN[name].replace("batch", "2")  # exported with a static batch
    outcome = edgeai.export(str(tmp_path / "m.pt2"), tmp_path / "out", inputs=[static], summary=SummaryConfig(bench=False))
    assert outcome.artifacts[0].parity["passed"]


def test_pt2_with_a_higher_order_cond_still_loads(tmp_path):
    from edgeai.source import load_model

    class Cond(nn.Module):
        def forward(self, x):
            return torch.cond(x.sum() > 0, lambda x: x * 2, lambda x: x - 1, (x,))
    torch.export.save(torch.export.export(Cond(), (torch.randn(2, 3),)), str(tmp_path / "cond.pt2"))
    source = load_model(str(tmp_path / "cond.pt2"), inputs=["x:2,3"])
    assert source.module(-torch.ones(2, 3)).tolist() == [[-2.0] * 3] * 2


# ---------------------------------------------------------------------------- what else the checks refuse

class _Small(nn.Module):
    def forward(self, x):
        return torch.relu(x)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    path = tmp_path_factory.mktemp("scripted") / "m.pt"
    torch.jit.script(_Small()).save(str(path))
    return path


def _patched(scripted, dst, suffix, old, new):
    """`scripted` with `old` replaced by `new` in the one record (ending in `suffix`) that holds it."""
    hits = []

    def patch(rel, data):
        if rel.endswith(suffix) and old in data:
            hits.append(rel)
            return data.replace(old, new)
        return data
    _rewrite(scripted, dst, patch)
    assert len(hits) == 1, hits
    return dst


@pytest.mark.parametrize("payload, needle", [
    ("torch.save([x], 'stolen.pt')", "aten::save"),
    ("ops.mylib.upload(x)", "mylib::upload, an operator outside aten/prim"),
    ("fork(torch.relu, x)", "calls 'fork'"),
    ("(x).storage()", "calls method 'storage'"),
    ("torch.set_(x, x)", "aten::set_, an operator on Storage values"),
    ("ops.prim.rpc_async('worker', 'f')", "prim::rpc_async"),
])
def test_torchscript_code_outside_the_allowlist_is_refused(tmp_path, scripted, payload, needle):
    from edgeai.source import load_model
    line = b"    return torch.relu(x)"
    evil = _patched(scripted, tmp_path / "evil.pt", ".py", line, f"    _9 = {payload}\n".encode() + line)
    with pytest.raises(ModelLoadError, match="--trust-pickle") as info:
        load_model(str(evil), inputs=["x:2,3"])
    assert needle in str(info.value) and ".py line" in str(info.value)


@pytest.mark.parametrize("suffix, old, new, needle", [
    ("data.pkl", b"c__torch__.test_security_code\n_Small\n", b"cos\nsystem\n", "unpickles os.system"),
    (".py", b"training : bool", b"training : __torch__.torch.classes.io.File", "torch.classes"),
])
def test_torchscript_pickle_globals_and_custom_classes_are_refused(tmp_path, scripted, suffix, old, new, needle):
    from edgeai.source import load_model
    evil = _patched(scripted, tmp_path / "evil.pt", suffix, old, new)
    with pytest.raises(ModelLoadError, match=needle):
        load_model(str(evil), inputs=["x:2,3"])


def test_operator_allowlist_is_derived_from_schemas_so_a_new_io_op_is_refused_by_default():
    from edgeai.opcheck import _schema_refusal, op_refusal
    parse = torch._C.parse_schema
    assert "string 'dest'" in _schema_refusal(parse("aten::write_bytes(Tensor self, str dest) -> ()"))
    assert "Storage" in _schema_refusal(parse("aten::alias_storage(Tensor self, Storage s) -> Tensor"))
    assert _schema_refusal(parse("aten::new_pointwise(Tensor self, Scalar alpha=1) -> Tensor")) is None
    for op in ("aten::from_file", "aten::save", "aten::set_", "prim::rpc_sync", "aten::wait"):
        assert op_refusal(op), op
    for op, overload in (("aten::add", None), ("aten::conv2d", None), ("aten::lstm", None),
                         ("aten::copy_", "default".replace("default", "")), ("aten::fill_", "Scalar")):
        assert op_refusal(op, overload) is None, op


def test_loaded_graph_is_checked_too(tmp_path):
    """The same check on the graph torch.export.load built (in case the JSON and the graph disagree)."""
    from edgeai.modelfile import check_graph_module
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    t = graph.call_function(torch.ops.aten.from_file.default, ("/tmp/victim", True, 8))
    graph.output(graph.call_function(torch.ops.aten.add.Tensor, (x, t)))
    with pytest.raises(ModelLoadError, match=r"aten::from_file\.default \(the loaded graph\)"):
        check_graph_module(tmp_path / "m.pt2", torch.fx.GraphModule(nn.Module(), graph))


# ---------------------------------------------------------------------------- branches a trace cannot see

def _positive_examples(tmp_path):
    x = np.abs(np.random.default_rng(0).standard_normal((2, 3))).astype(np.float32) + 0.1
    np.savez(tmp_path / "ex.npz", x=x)
    return tmp_path / "ex.npz"


def test_trace_that_fixed_a_branch_on_input_values_fails_verification(cli, tmp_path):
    """models.data_dependent: `if x.sum() > 0` fails torch.export; the TorchScript fallback traced only
    the positive branch, and the manifest used to say parity passed."""
    code, _, err = cli("export", factory("data_dependent"), "--example-inputs", _positive_examples(tmp_path),
                       "-o", tmp_path / "out")
    _one_line_error(code, err, "torchscript: the trace fixed Python control flow on input values at models.py:",
                    "(bool)", "--allow-trace-branches")
    assert not (tmp_path / "out").exists()


def test_allowed_trace_branch_is_verified_on_eval_batches_that_take_the_other_branch(cli, tmp_path):
    from edgeai import runtime
    ex = _positive_examples(tmp_path)
    data = np.abs(np.random.default_rng(1).standard_normal((8, 3))).astype(np.float32)
    data[4:6] *= -1  # samples 4-5: the other branch
    np.savez(tmp_path / "eval.npz", x=data)
    code, _, err = cli("export", factory("data_dependent"), "--example-inputs", ex, "-o", tmp_path / "bad",
                       "--allow-trace-branches", "--eval-data", tmp_path / "eval.npz", "--no-bench")
    _one_line_error(code, err, "at eval samples 4-5")
    # without eval data the user's flag is all there is: the manifest says which branch the artifact keeps
    code, _, err = cli("export", factory("data_dependent"), "--example-inputs", ex, "-o", tmp_path / "ok",
                       "--allow-trace-branches", "--no-bench")
    assert code == 0, err
    entry = json.loads((tmp_path / "ok" / "manifest.json").read_text())["artifacts"][0]
    assert entry["details"]["trace_branches"][0].startswith("models.py:")
    assert any("follows the branch of the example inputs" in n for n in entry["notes"])
    got = runtime.load(tmp_path / "ok").run({"x": np.full((2, 3), -3.0, np.float32)})
    assert np.allclose(next(iter(got.values())), -6.0)  # PyTorch gives x - 1 = -4: the reason for refusing


def test_shape_checks_inside_torch_modules_are_not_branches_on_values():
    import io
    import warnings

    from edgeai.exporters.trace_branches import watch_branches

    class SizeOfNonzero(nn.Module):
        def forward(self, x):
            return x if x.nonzero().shape[0] > 3 else -x
    cases = [(models.lstm(), torch.randn(2, 5, 6), []), (models.tiny_encoder(), torch.randn(2, 5, 32), []),
             (models.frozen_batch(), torch.randn(2, 4), []),
             (models.data_dependent(), torch.randn(2, 3), ["(bool)"]), (SizeOfNonzero(), torch.randn(2, 3), ["(bool)"])]
    for module, x, want in cases:
        with watch_branches(1) as found, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TracerWarnings this replaces
            torch.onnx.export(module, (x,), io.BytesIO(), dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}})
        assert [f.rsplit(" ", 1)[1] for f in found] == want, (type(module).__name__, found)
