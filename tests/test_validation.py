"""Typed, validated input: each wrong value is one line naming what is wrong, exit 2, before any work."""
import numpy as np
import pytest

from conftest import factory
from test_cli_errors import _one_line_error

RAISES = factory("raises")  # a factory that fails when called: an error naming the field proves it came first


def _recipe(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(f"model: {RAISES}\ninputs: ['x:1,3']\n{text}\n")
    return path


# ---- recipe fields are checked against the dataclasses' annotations ----------------------------------

@pytest.mark.parametrize("text, needles", [
    ("model: 5", ["recipe field 'model': expected a string, got 5 (an integer)"]),
    ("inputs: 5", ["recipe field 'inputs': expected a list of strings, got 5 (an integer)"]),
    ("export: [1, 2]", ["recipe field 'export': expected a mapping with string keys, got [1, 2] (a list)"]),
    ("tolerance: abc", ["recipe field 'tolerance': expected a mapping of strings to numbers, got 'abc'"]),
    ("tolerance: {atol: abc}", ["recipe field 'tolerance.atol': expected a number, got 'abc' (a string)"]),
    ("tolerance: {atol: 1e-4}", ["'tolerance.atol': expected a number, got '1e-4'", "1.0e-4"]),
    ("trust_pickle: 'false'", ["recipe field 'trust_pickle': expected true or false, got 'false' (a string)"]),
    ("dynamic_batch: 'no'", ["recipe field 'dynamic_batch': expected true or false, got 'no'"]),
    ("summary: {threads: '4'}", ["recipe field 'summary.threads': expected an integer, got '4' (a string)"]),
    ("summary: {bench: 1}", ["recipe field 'summary.bench': expected true or false, got 1 (an integer)"]),
    ("data: {eval: 5}", ["recipe field 'data.eval': expected a string or null, got 5 (an integer)"]),
    ("data: [a]", ["recipe field 'data': expected a mapping of eval, calibration, train, got ['a'] (a list)"]),
    ("max_drop: abc", ["recipe field 'max_drop': expected a number or null, got 'abc' (a string)"]),
    ("steps: 5", ["recipe field 'steps': expected a list of step names or {name: options} mappings, got 5"]),
    ("quantize: 5", ["recipe field 'quantize': expected a list of quantization names"]),
    ("steps: [{prune: {ratio: abc}}]", ["step 'prune' option 'ratio': expected a number or null, got 'abc'"]),
    ("steps: [{prune: {pinned: fc}}]", ["step 'prune' option 'pinned': expected a list of strings, got 'fc'"]),
    ("steps: [{distill: {feature_layers: [[a, 1]]}}]",
     ["step 'distill' option 'feature_layers[0][1]': expected a string, got 1 (an integer)"]),
    ("quantize: [{int8-dynamic: {per_channel: 'no'}}]",
     ["quantization 'int8-dynamic' option 'per_channel': expected true or false, got 'no'"]),
    ("export: {opset: '17'}", ["onnx export option 'opset': expected an integer, got '17' (a string)"]),
])
def test_wrong_typed_recipe_field_is_one_line_naming_field_type_and_value(cli, tmp_path, text, needles):
    code, _, err = cli("export", _recipe(tmp_path, text), "-o", tmp_path / "o")
    _one_line_error(code, err, *needles)
    assert "weights server unreachable" not in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("word", ["'false'", "'no'", "'off'"])
def test_trust_pickle_as_a_string_never_turns_unpickling_on(cli, tmp_path, word):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": Payload()}, tmp_path / "model.pt")
    path = tmp_path / "r.yaml"
    path.write_text(f"model: {tmp_path / 'model.pt'}\ninputs: ['x:1,3']\ntrust_pickle: {word}\n")
    code, _, err = cli("export", path, "-o", tmp_path / "o")
    _one_line_error(code, err, "recipe field 'trust_pickle': expected true or false")
    assert not marker.exists()


def test_recipe_that_is_not_utf8_is_named(cli, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"model: \"caf\xe9.py:make\"\n")
    code, _, err = cli("export", path, "-o", tmp_path / "o")
    _one_line_error(code, err, f"recipe '{path}' is not UTF-8 text (byte 0xe9 at offset 11)")


def test_python_recipe_with_a_wrong_type_fails_before_the_model_loads(tmp_path):
    import edgeai
    from edgeai.recipe import RecipeError
    with pytest.raises(RecipeError, match=r"recipe field 'trust_pickle': expected true or false, got 'false'"):
        edgeai.export(RAISES, tmp_path / "o", inputs=("x:1,3",), trust_pickle="false")
    with pytest.raises(RecipeError, match=r"recipe field 'inputs\[0\]': expected a string, got 3"):
        edgeai.export(RAISES, tmp_path / "o", inputs=(3,))


def test_good_recipe_values_are_normalized_not_refused():
    from edgeai.recipe import make_config, recipe_from_dict
    from edgeai.steps import get_model_step
    recipe = recipe_from_dict({"model": "m.py:f", "inputs": "x:1,3", "tolerance": {"atol": 1},
                               "summary": {"threads": 2.0}, "steps": ["prune"]})
    assert recipe.inputs == ("x:1,3",) and recipe.summary.threads == 2 and isinstance(recipe.summary.threads, int)
    config = make_config(get_model_step("prune").config_cls, {"ratio": 0.5, "pinned": ["fc"]}, "step 'prune'")
    assert config.pinned == ("fc",) and config.ratio == 0.5


# ---- numbers on the command line are finite; thread counts are bounded ------------------------------

def _tiny_onnx(path):
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path)
    return path


OPT = ["optimize", RAISES, "--input", "x:1,3", "--eval-data", "e.npz", "--max-drop", "1", "-o", "o"]


@pytest.mark.parametrize("args", [
    [*OPT, "--budget-minutes", "nan"], [*OPT, "--budget-minutes", "inf"], [*OPT, "--max-size-mb", "nan"],
    [*OPT, "--max-rss-mb", "inf"], [*OPT, "--min-seconds", "nan"], [*OPT, "--threads", "100000"],
    [*OPT, "--rounds", "0"], [*OPT, "--workers", "-1"],
    ["optimize", RAISES, "--input", "x:1,3", "--eval-data", "e.npz", "--max-drop", "nan", "-o", "o"],
    ["export", RAISES, "--input", "x:1,3", "--atol", "nan", "-o", "o"],
    ["export", RAISES, "--input", "x:1,3", "--rtol", "inf", "-o", "o"],
    ["export", RAISES, "--input", "x:1,3", "--threads", "100000", "-o", "o"],
    ["run", "m.onnx", "--input-data", "x.npz", "-o", "y.npz", "--threads", "100000"],
    ["bench", "m.onnx", "--threads", "100000"],
    ["data", "text", "f.txt", "--tokenizer", "hf:t", "--max-length", "0", "-o", "o.npz"],
])
def test_non_finite_or_absurd_numbers_are_refused_by_the_parser(cli, capsys, args):
    with pytest.raises(SystemExit) as info:
        cli(*args)
    assert info.value.code == 2
    assert "expected" in capsys.readouterr().err


def test_optimize_config_refuses_nan_limits_from_python():
    from edgeai.errors import ConfigError
    from edgeai.optimize import OptimizeConfig
    config = OptimizeConfig(model="m.onnx", eval_data="e.npz", max_drop=1.0, budget_minutes=float("nan"))
    with pytest.raises(ConfigError, match="--budget-minutes must be > 0 and finite, got nan"):
        config.validate()


def test_threads_above_the_cores_are_lowered_with_a_warning(cli, tmp_path, monkeypatch):
    from edgeai import argtypes
    monkeypatch.setattr(argtypes, "available_cores", lambda: 2)
    model = _tiny_onnx(tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", x=np.array([[-1, 0, 2]], np.float32))
    code, out, err = cli("run", model, "--input-data", tmp_path / "x.npz", "-o", tmp_path / "y.npz", "--threads", "64")
    assert code == 0, err
    assert "--threads 64 is more than the 2 CPU core(s) here; using 2" in " ".join(err.split())
    np.testing.assert_array_equal(np.load(tmp_path / "y.npz")["y"], [[0, 0, 2]])


def test_threads_help_says_what_happens_above_the_cores(cli, capsys):
    with pytest.raises(SystemExit):
        cli("bench", "--help")
    assert "lowered to the core count" in " ".join(capsys.readouterr().out.split())


# ---- labels for top-1 must be class ids --------------------------------------------------------------

def _relu_onnx(path):
    """y = relu(x), x: batch x 3 (three 'classes')."""
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path)
    return path


X4 = np.array([[3, 1, 0], [0, 2, 1], [0, 1, 5], [4, 0, 0]], np.float32)   # argmax 0, 1, 2, 0


@pytest.mark.parametrize("labels, needle", [
    (np.array([0.5, 1, 2, 0]), "'labels' hold fractional values such as 0.5"),
    (np.array([0, 1, 2, 7]), "'labels' hold 7, outside the model's 3 classes (0 to 2)"),
    (np.array([0, -1, 2, 0]), "'labels' hold -1, outside the model's 3 classes"),
    (np.array(["a", "b", "c", "d"]), "'labels' have dtype <U1"),
])
def test_labels_that_are_not_class_ids_are_refused_naming_the_metrics_that_fit(cli, tmp_path, labels, needle):
    model = _relu_onnx(tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=X4, labels=labels)
    code, out, err = cli("eval", model, "--eval-data", tmp_path / "d.npz")
    _one_line_error(code, err, needle, "not class ids for top-1", "--metric FILE.py:FUNC", "cosine similarity")
    assert "top1" not in out


def test_integral_float_labels_are_class_ids(tmp_path):
    from edgeai.evaluate import evaluate
    model = _relu_onnx(tmp_path / "m.onnx")
    result = evaluate(model, {"x": X4, "labels": np.array([0.0, 1.0, 2.0, 1.0], np.float32)})
    assert (result.metric, result.value) == ("top1", 75.0)


# ---- malformed files edgeai reads: one line naming the file and the field ----------------------------

@pytest.fixture
def export_folder(tmp_path):
    """An export folder written without torch: the relu model, a manifest with real digests."""
    from edgeai.fsutil import sha256_file
    from edgeai.manifest import ArtifactEntry, Manifest
    folder = tmp_path / "exp"
    folder.mkdir()
    model = _relu_onnx(folder / "model.onnx")
    spec = [{"name": "x", "shape": ["batch", 3], "dtype": "float32"}]
    entry = ArtifactEntry("fp32", "model.onnx", "onnx", "fp32", sha256_file(model), model.stat().st_size, spec,
                          [{"name": "y", "shape": ["batch", 3], "dtype": "float32"}])
    Manifest(source={"inputs": spec, "example_dims": {"batch": 2}}, artifacts=[entry], versions={},
             created="now").write(folder)
    return folder


def _edit_json(path, edit):
    import json
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m["artifacts"][0].update(digests="x"),
     "artifacts[0].digests: expected a mapping of strings to strings, got 'x' (a string)"),
    (lambda m: m["source"].update(example_dims="x"), "source.example_dims: expected a mapping of strings to integers"),
    (lambda m: m["source"].update(example_dims={"batch": "two"}), "source.example_dims.batch: expected an integer"),
    (lambda m: m.update(source=None), "source: expected a mapping with string keys, got null"),
    (lambda m: m["artifacts"][0].update(size_bytes="big"), "artifacts[0].size_bytes: expected an integer, got 'big'"),
    (lambda m: m["artifacts"][0]["inputs"][0].update(shape=3), "artifacts[0].inputs[0].shape: expected a list"),
    (lambda m: m.update(artifacts={"fp32": 1}), "artifacts: expected a list of artifacts"),
])
@pytest.mark.parametrize("command", ["info", "run", "bench"])
def test_malformed_manifest_is_one_line_naming_file_and_field(cli, tmp_path, export_folder, edit, needle, command):
    _edit_json(export_folder / "manifest.json", edit)
    np.savez(tmp_path / "x.npz", x=X4)
    extra = {"info": [], "run": ["--input-data", tmp_path / "x.npz", "-o", tmp_path / "y.npz"],
             "bench": ["--runs", "2", "--warmup", "0", "--no-isolate"]}[command]
    code, _, err = cli(command, export_folder, *extra)
    _one_line_error(code, err, f"'{export_folder / 'manifest.json'}' is not a valid edgeai manifest", needle)


@pytest.mark.parametrize("content, needle", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (b'{"schema": "edgeai.manifest/2", "source": "\xff"}', "not UTF-8 text (byte 0xff at offset 43)"),
], ids=["100000-deep", "not-utf8"])
def test_deep_or_undecodable_manifest_is_one_line(cli, export_folder, content, needle):
    path = export_folder / "manifest.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    code, _, err = cli("info", export_folder)
    _one_line_error(code, err, f"'{path}' is not a valid edgeai manifest", needle)


@pytest.fixture
def bench_report(tmp_path, export_folder, cli):
    code, _, err = cli("bench", export_folder / "model.onnx", "--runs", "2", "--warmup", "0", "--no-isolate",
                       "--json", tmp_path / "base.json")
    assert code == 0, err
    return tmp_path / "base.json"


@pytest.mark.parametrize("edit, needle", [
    (lambda r: r.update(results="x"), "results: expected a list of mappings, got 'x'"),
    (lambda r: r["results"][0]["timing"].update(p50_ms="fast"), "results[0].timing.p50_ms: expected a number or null"),
    (lambda r: r["results"][0]["timing"].update(p50_ms=0), "results[0].timing.p50_ms: expected a time > 0, got 0"),
    (lambda r: r["results"][0].update(timing=5), "results[0].timing: expected a mapping of n, mean_ms"),
    (lambda r: r["results"][0].update(timing=None), "results[0].timing: a result with status 'ok' needs its timing"),
    (lambda r: r.update(env="x"), "env: expected a mapping, got 'x'"),
    (lambda r: r.update(config=[1]), "config: expected a mapping of runtime, threads"),
])
def test_malformed_compare_report_is_one_line_naming_file_and_field(cli, tmp_path, bench_report, edit, needle):
    new = tmp_path / "new.json"
    new.write_text(bench_report.read_text())
    _edit_json(new, edit)
    code, _, err = cli("bench", "--compare", bench_report, new)
    _one_line_error(code, err, f"report '{new}' is not a valid edgeai.bench/1 report", needle)


@pytest.mark.parametrize("threshold", ["inf", "nan", "inf%"])
def test_compare_threshold_must_be_finite(cli, bench_report, threshold):
    code, _, err = cli("bench", "--compare", bench_report, bench_report, "--threshold", threshold)
    _one_line_error(code, err, f"bad --threshold '{threshold}': expected a slowdown such as 5% or 0.05")


def test_compare_report_without_cpu_section_or_with_new_fields_still_compares(cli, tmp_path, bench_report):
    new = tmp_path / "new.json"
    new.write_text(bench_report.read_text())
    _edit_json(new, lambda r: (r["env"].pop("cpu"), r["results"][0].update(from_a_newer_edgeai=1)))
    code, out, err = cli("bench", "--compare", bench_report, new)
    assert code == 0, err
    assert "1.000" in out


def test_deep_compare_report_is_one_line(cli, tmp_path, bench_report):
    deep = tmp_path / "deep.json"
    deep.write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    code, _, err = cli("bench", "--compare", bench_report, deep)
    _one_line_error(code, err, f"report '{deep}' is nested too deeply")


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.update(unknown_key=1), "unknown key(s) ['unknown_key']"),
    (lambda d: d.update(size_bytes="big"), "size_bytes: expected an integer or null, got 'big'"),
])
def test_cached_optimize_result_with_unknown_or_mistyped_key_is_one_line(tmp_path, edit, needle):
    from test_optimize_search import FakeLab, search

    from edgeai.optimize.cache import CacheError
    table = dict(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0}, metric={})
    search(FakeLab(**table), tmp_path)
    results = sorted((tmp_path / "cache" / "candidates").glob("*/result.json"))
    assert results
    _edit_json(results[0], edit)
    with pytest.raises(CacheError) as info:
        search(FakeLab(**table), tmp_path)
    assert f"cache entry '{results[0]}' is not one this edgeai wrote" in str(info.value)
    assert needle in str(info.value) and "--no-cache" in str(info.value)


def _tflite(path, in_name="serving_default_x:0", out_name="PartitionedCall:0", in_type=None, signature=None):
    """A one-op (RELU, 1x3) .tflite written with the flatbuffer schema: tensor names, types and the
    signature as given (`signature`: (input name, output name) or None for none)."""
    flatbuffers = pytest.importorskip("flatbuffers")
    s = pytest.importorskip("ai_edge_litert.schema_py_generated")

    def tensor(name, typ):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, [1, 3], typ, 0
        return t

    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.RELU
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    graph = s.SubGraphT()
    graph.tensors = [tensor(in_name, s.TensorType.FLOAT32 if in_type is None else in_type),
                     tensor(out_name, s.TensorType.FLOAT32)]
    graph.inputs, graph.outputs, graph.operators = [0], [1], [op]
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], [s.BufferT()]
    if signature:
        sig = s.SignatureDefT()
        sig.signatureKey, sig.subgraphIndex = "serving_default", 0
        sig.inputs, sig.outputs = [s.TensorMapT(), ], [s.TensorMapT()]
        sig.inputs[0].name, sig.inputs[0].tensorIndex = signature[0], 0
        sig.outputs[0].name, sig.outputs[0].tensorIndex = signature[1], 1
        model.signatureDefs = [sig]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())
    return path


@pytest.mark.parametrize("type_name", ["RESOURCE", "INT4", 99])
def test_tflite_input_of_a_type_no_array_holds_is_one_line_naming_the_tensor(cli, tmp_path, type_name):
    s = pytest.importorskip("ai_edge_litert.schema_py_generated")
    code_ = type_name if isinstance(type_name, int) else getattr(s.TensorType, type_name)
    model = _tflite(tmp_path / "m.tflite", in_type=code_)
    np.savez(tmp_path / "x.npz", x=X4[:1])
    shown = f"UNKNOWN TYPE {type_name}" if isinstance(type_name, int) else type_name
    for command, extra in (("run", ["--input-data", tmp_path / "x.npz", "-o", tmp_path / "y.npz"]),
                           ("eval", ["--eval-data", tmp_path / "x.npz", "--reference", model])):
        code, _, err = cli(command, model, *extra)
        _one_line_error(code, err, f"'{model}': input 'x' has type {shown}, which cannot be fed or read as an array")


@pytest.mark.parametrize("names, want", [
    (dict(), ("x", "PartitionedCall")),                                      # no signature: plain tensor names
    (dict(signature=("image", "logits")), ("image", "logits")),              # a signature names them
    (dict(in_name="x:0", out_name="x:1"), ("x:0", "x:1")),                   # plain names would collide: kept
])
def test_every_tflite_path_names_inputs_by_one_rule(cli, tmp_path, names, want):
    from edgeai.runtime import load
    from edgeai.runtime.subproc import IsolatedSession
    from edgeai.runtime.tflite import TFLiteSession
    model = _tflite(tmp_path / "m.tflite", **names)
    x = np.array([[-1, 2, 0.5]], np.float32)
    sessions = [load(model), IsolatedSession(model, "tflite"), TFLiteSession(model)]
    assert {(s.inputs[0].name, s.outputs[0].name) for s in sessions} == {want}
    assert TFLiteSession.read_specs(model)[0][0].name == want[0]
    for s in sessions:
        np.testing.assert_array_equal(s.run({want[0]: x})[want[1]], [[0, 2, 0.5]])
    np.savez(tmp_path / "x.npz", **{want[0]: x}, labels=np.array([1]))
    code, _, err = cli("run", model, "--input-data", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert code == 0, err
    assert list(np.load(tmp_path / "y.npz")) == [want[1]]
    code, out, err = cli("eval", model, "--eval-data", tmp_path / "x.npz")
    assert code == 0, err
    assert "100.00" in out


def test_tokenizer_json_that_is_not_utf8_is_one_line_naming_it(cli, tmp_path):
    pytest.importorskip("transformers")
    import hf_tiny
    folder = hf_tiny.wordpiece_vocab(tmp_path / "tok", ["hello", "world"])
    raw = (folder / "tokenizer.json").read_bytes()
    (folder / "tokenizer.json").write_bytes(raw.replace(b"hello", b"hel\xfflo", 1))
    (tmp_path / "s.txt").write_text("hello world\n")
    code, _, err = cli("data", "text", tmp_path / "s.txt", "--tokenizer", f"hf:{folder}", "-o", tmp_path / "d.npz")
    _one_line_error(code, err, f"'{folder / 'tokenizer.json'}' is not UTF-8 text (byte 0xff at offset")
    assert not (tmp_path / "d.npz").exists()


def test_npz_member_that_is_a_raw_pickle_is_refused_without_unpickling(cli, tmp_path):
    import pickle
    import zipfile
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with zipfile.ZipFile(tmp_path / "x.npz", "w") as z:
        z.writestr("x.npy", pickle.dumps(Payload()))
    model = _relu_onnx(tmp_path / "m.onnx")
    for command, extra in (("run", ["--input-data", tmp_path / "x.npz", "-o", tmp_path / "y.npz"]),
                           ("eval", ["--eval-data", tmp_path / "x.npz"])):
        code, _, err = cli(command, model, *extra)
        _one_line_error(code, err, f"'{tmp_path / 'x.npz'}' is not a readable .npz file: member 'x' is not a NumPy "
                                   ".npy array (a raw pickle", "never unpickles")
    assert not marker.exists()


def test_npz_object_array_is_named_as_pickled_objects(cli, tmp_path):
    np.savez(tmp_path / "x.npz", x=np.array([{"a": 1}], dtype=object))
    code, _, err = cli("run", _relu_onnx(tmp_path / "m.onnx"), "--input-data", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    _one_line_error(code, err, "is not a readable .npz file: it holds an object array (pickled Python objects)")


# ---- a full disk is the machine's state: one line naming the file, the old file kept -----------------

@pytest.fixture
def full_disk(monkeypatch):
    """Every fsync fails with ENOSPC, as a write to a full file system does (no root needed for a tmpfs)."""
    import errno
    import os

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", no_space)


@pytest.mark.parametrize("command", ["run", "bench", "data"])
def test_full_disk_while_writing_an_output_is_one_line_and_keeps_the_old_file(cli, tmp_path, command, request):
    model = _relu_onnx(tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", x=X4)
    out = tmp_path / "out.file"
    out.write_text("old")
    if command == "data":
        pytest.importorskip("transformers")
        import hf_tiny
        folder = hf_tiny.wordpiece_vocab(tmp_path / "tok", ["hello"])
        (tmp_path / "s.txt").write_text("hello\n")
        args = ["data", "text", tmp_path / "s.txt", "--tokenizer", f"hf:{folder}", "-o", out]
    else:
        args = {"run": ["run", model, "--input-data", tmp_path / "x.npz", "-o", out],
                "bench": ["bench", model, "--runs", "2", "--warmup", "0", "--no-isolate", "--json", out]}[command]
    request.getfixturevalue("full_disk")
    code, _, err = cli(*args)
    _one_line_error(code, err, f"cannot write '{out}': no space left on the device (ENOSPC)")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.glob(".out.file*")) == []


def test_full_disk_anywhere_else_is_one_line_not_an_internal_error(cli, tmp_path, monkeypatch, export_folder):
    import errno

    from edgeai import manifest

    def full(cls, folder):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "somewhere"))
    monkeypatch.setattr(manifest.Manifest, "read", classmethod(full))
    code, _, err = cli("info", export_folder)
    _one_line_error(code, err, f"cannot write '{tmp_path / 'somewhere'}': no space left on the device")


def test_output_folder_name_that_is_not_utf8_is_named_not_blamed_on_onnx(cli, tmp_path):
    out = str(tmp_path) + "/out\udcff"   # what Python makes of the byte 0xff in argv
    code, _, err = cli("export", _relu_onnx(tmp_path / "m.onnx"), "-o", out, "--no-bench")
    _one_line_error(code, err, f"--output '{tmp_path}/out\\xff' is not valid UTF-8", "rename it")
    assert "ONNX checker" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_forward_that_returns_none_names_the_model(cli, tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "nothing.py").write_text(
        "import torch\n\nclass M(torch.nn.Module):\n    def forward(self, x):\n        return None\n\n\n"
        "def make():\n    return M()\n")
    spec = f"{tmp_path / 'nothing.py'}:make"
    code, _, err = cli("export", spec, "--input", "x:1,3", "-o", tmp_path / "o", "--no-bench")
    _one_line_error(code, err, f"the model '{spec}' returns None from forward() on the example inputs, not a tensor")
    assert ".edgeai-staging" not in err and not (tmp_path / "o").exists()
