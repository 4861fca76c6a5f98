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
    ["export", RAISES, "--input", "x:1,3", "--rtol", "-inf", "-o", "o"],
    ["export", RAISES, "--input", "x:1,3", "--threads", "100000", "-o", "o"],
    ["run", "m.onnx", "--input", "x.npz", "-o", "y.npz", "--threads", "100000"],
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
    with pytest.raises(ConfigError, match="--budget-minutes must be a finite number > 0, got nan"):
        config.validate()


def test_threads_above_the_cores_are_lowered_with_a_warning(cli, tmp_path, monkeypatch):
    from edgeai import argtypes
    monkeypatch.setattr(argtypes, "available_cores", lambda: 2)
    model = _tiny_onnx(tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", x=np.array([[-1, 0, 2]], np.float32))
    code, out, err = cli("run", model, "--input", tmp_path / "x.npz", "-o", tmp_path / "y.npz", "--threads", "64")
    assert code == 0, err
    assert "--threads 64 is more than the 2 CPU core(s) here; using 2" in " ".join(err.split())
    np.testing.assert_array_equal(np.load(tmp_path / "y.npz")["y"], [[0, 0, 2]])


def test_threads_help_says_what_happens_above_the_cores(cli, capsys):
    with pytest.raises(SystemExit):
        cli("bench", "--help")
    assert "lowered to the core count" in " ".join(capsys.readouterr().out.split())
