"""User metrics (`--metric FILE.py:FUNC`): loaded, called with every output and the data's labels, used by eval and export."""
import json
import textwrap

import numpy as np
import pytest

from edgeai.errors import ConfigError, DataError
from edgeai.evaluate import evaluate
from edgeai.manifest import Manifest
from edgeai.metrics import MetricError, load_metric

from conftest import factory
from test_data_eval import matmul_model

METRIC_PY = textwrap.dedent("""
    import numpy as np

    def neg_mae(outputs, labels):
        # minus the mean absolute error of output 'y' (else 'output'), column 0, against float labels
        out = outputs["y"] if "y" in outputs else outputs["output"]
        return -float(np.mean(np.abs(out[:, 0] - labels)))

    def n_outputs(outputs, labels):
        assert labels is None
        return float(len(outputs) * 1000 + next(iter(outputs.values())).shape[0])

    def nan(outputs, labels):
        return float("nan")

    def text(outputs, labels):
        return "good"
""")


@pytest.fixture
def metric_file(tmp_path):
    path = tmp_path / "my_metric.py"
    path.write_text(METRIC_PY)
    return path


def test_user_metric_sees_outputs_by_name_and_float_labels(tmp_path, metric_file):
    model = matmul_model(tmp_path / "eye.onnx", np.eye(4))
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    labels = x[:, 0] + np.array([0.5, -0.5, 1.0, 0.0, 0.0])       # float regression targets
    r = evaluate(model, {"x": x, "labels": labels}, metric=load_metric(f"{metric_file}:neg_mae"), batch_size=2)
    assert (r.metric, r.n) == ("neg_mae", 5) and r.value == pytest.approx(-0.4)


def test_user_metric_without_labels_gets_none(tmp_path, metric_file):
    model = matmul_model(tmp_path / "eye.onnx", np.eye(4))
    r = evaluate(model, {"x": np.ones((7, 4), np.float32)}, metric=load_metric(f"{metric_file}:n_outputs"))
    assert r.value == 1007.0


@pytest.mark.parametrize("name,error,message", [
    ("nan", MetricError, "must return one finite number"),
    ("text", MetricError, "must return one finite number"),
    ("n_outputs", DataError, "raised AssertionError"),     # labels given, the metric asserts none
])
def test_user_metric_that_misbehaves_is_a_clear_error(tmp_path, metric_file, name, error, message):
    model = matmul_model(tmp_path / "eye.onnx", np.eye(4))
    data = {"x": np.ones((3, 4), np.float32), "labels": np.zeros(3)}
    with pytest.raises(error, match=message):
        evaluate(model, data, metric=load_metric(f"{metric_file}:{name}"))


def test_metric_spec_errors_name_the_spec(metric_file):
    assert load_metric(None) is None
    with pytest.raises(ConfigError, match="FILE.py:FUNC"):
        load_metric("no_colon")
    with pytest.raises(ConfigError, match="has no callable 'missing'"):
        load_metric(f"{metric_file}:missing")
    with pytest.raises(ConfigError, match="does not exist"):
        load_metric("nowhere.py:f")


def test_eval_cli_and_export_score_with_the_user_metric(cli, tmp_path, metric_file):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 64)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x, labels=rng.standard_normal(32).astype(np.float32))
    code, out, err = cli("export", factory("wide_mlp"), "--input", "x:batch,64", "-o", tmp_path / "o",
                         "--quantize", "int8-dynamic", "--eval-data", tmp_path / "eval.npz",
                         "--metric", f"{metric_file}:neg_mae", "--no-bench")
    assert code == 0, err
    m = Manifest.read(tmp_path / "o")
    fp32, q = m.get("fp32"), m.get("int8-dynamic")
    assert fp32.metrics["metric_name"] == "neg_mae" and fp32.metrics["neg_mae"] < 0
    assert "top1" not in fp32.metrics and "cosine" not in fp32.metrics
    assert abs(q.metrics["neg_mae"] - fp32.metrics["neg_mae"]) < 0.05
    assert "neg_mae" in out

    code, out, err = cli("eval", tmp_path / "o", "--eval-data", tmp_path / "eval.npz",
                         "--metric", f"{metric_file}:neg_mae", "--json", tmp_path / "e.json")
    assert code == 0, err
    results = json.loads((tmp_path / "e.json").read_text())["results"]
    assert [r["metric"] for r in results] == ["neg_mae", "neg_mae"]
    assert results[0]["value"] == pytest.approx(fp32.metrics["neg_mae"], abs=1e-5)


def test_bad_metric_on_the_command_line_is_one_line_exit_2(cli, tmp_path):
    code, out, err = cli("eval", tmp_path, "--eval-data", tmp_path / "x.npz", "--metric", "nowhere.py:f")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
