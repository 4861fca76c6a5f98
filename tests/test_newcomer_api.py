"""The Python API takes what users have: an nn.Module with example inputs, one keyword set for export and
optimize, quantize=["int8-dynamic"]; a package in the working folder imports; a pickle says what is missing."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgeai
from edgeai.errors import ConfigError, ModelLoadError

REPO = Path(__file__).resolve().parent.parent


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x).relu()


def _net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


def test_export_takes_a_module_object_and_the_readme_quantize_list(tmp_path):
    """edgeai.export(module, ...) needed a 'file.py:factory'; quantize=['int8-dynamic'] raised AttributeError."""
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    out = edgeai.export(net, tmp_path / "out", example_inputs={"x": torch.from_numpy(x[:2])},
                        quantize=["int8-dynamic"], eval_data=tmp_path / "eval.npz", summary={"bench": False})
    names = [a.name for a in out.manifest.artifacts]
    assert names == ["fp32", "int8-dynamic"]
    fp32 = edgeai.runtime.load(out.out_dir, artifact="fp32").run({"x": x})
    with torch.no_grad():
        np.testing.assert_allclose(list(fp32.values())[0], net(torch.from_numpy(x)).numpy(), atol=1e-5)
    assert out.manifest.artifacts[1].metrics["cosine"] > 0.99
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())   # the caller's module is untouched


@pytest.mark.parametrize("kwargs, message", [
    (dict(quantize="int8-dynamic", eval_data=3), "eval_data must be a path"),
    (dict(quantize=[3]), "each quantization must be a name or a one-key mapping"),
    (dict(inputs=[("x", 8)]), r"recipe field 'inputs\[0\]': expected a string"),
    (dict(trust_pickle="yes"), "recipe field 'trust_pickle': expected true or false"),
    (dict(export=["opset", 17]), "recipe field 'export': expected a mapping"),
    (dict(example_inputs=5), "example_inputs must be an .npz path"),
])
def test_export_keywords_of_the_wrong_type_are_config_errors(tmp_path, kwargs, message):
    opts = {"inputs": ["x:batch,8"], **kwargs}
    with pytest.raises(ConfigError, match=message):
        edgeai.export(_net(), tmp_path / "out", **opts)
    assert not (tmp_path / "out").exists()


def test_module_without_inputs_and_a_non_model_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs its inputs: example_inputs"):
        edgeai.export(_net(), tmp_path / "out")
    with pytest.raises(ConfigError, match="needs its inputs: example_inputs"):
        edgeai.optimize(_net(), tmp_path / "opt", eval_data="e.npz", max_drop=1.0)
    with pytest.raises(ConfigError, match="got int"):
        edgeai.export(42, tmp_path / "out")
    with pytest.raises(ConfigError, match="max_drop must be a number"):
        edgeai.optimize("m.py:f", tmp_path / "opt", max_drop="1")


@pytest.mark.parametrize("kw", ["eval_data", "calibration", "train_data"])
def test_export_and_optimize_take_the_same_data_keywords(tmp_path, kw):
    """One name per kind of data in both verbs: a wrong type is refused naming the keyword in each."""
    for verb, call in (("export", edgeai.export), ("optimize", edgeai.optimize)):
        with pytest.raises(ConfigError, match=f"^{verb}: {kw} must be a path"):
            call(_net(), tmp_path / verb, inputs=["x:batch,8"], max_drop=1.0, **{kw: 3})
    assert not list(tmp_path.iterdir())


def test_optimize_of_a_module_into_a_new_nested_folder_gets_past_its_cache(tmp_path):
    """edgeai.optimize(net, "out/opt") failed with "cannot create folder 'out/opt/.cache/models'" when out/
    did not exist; an unknown keyword is named before anything is written."""
    with pytest.raises(ConfigError, match=r"unknown optimize option\(s\) \['evaldata'\]; known: .*eval_data"):
        edgeai.optimize(_net(), tmp_path / "a" / "opt", inputs=["x:batch,8"], max_drop=1.0, evaldata="e.npz")
    assert not (tmp_path / "a").exists()
    with pytest.raises(edgeai.errors.DataError, match="'missing.npz' does not exist"):
        edgeai.optimize(_net(), tmp_path / "b" / "opt", inputs=["x:batch,8"], max_drop=1.0, eval_data="missing.npz")


PLAIN_SCRIPT = """
import numpy as np
import torch
from torch import nn

import edgeai


class Net(nn.Module):          # defined in the script, which has no `if __name__ == "__main__":`
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x).relu()


torch.manual_seed(0)
x = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
np.savez("eval.npz", x=x)
result = edgeai.optimize(Net(), "opt", example_inputs={"x": torch.from_numpy(x[:2])}, eval_data="eval.npz",
                         max_drop=0.05, rounds=1, min_seconds=0.1, prune_ratios=[])
print("CHOSEN", result.chosen)
"""


@pytest.mark.slow  # one optimize run (FP32 and INT8-dynamic built in a worker, timed): ~60 s on 2 busy cores
def test_optimize_from_a_plain_script_with_a_module_defined_in_it(tmp_path):
    """Before: every build worker re-ran the script (spawn re-imports __main__), died, and the failure was cached."""
    (tmp_path / "plain.py").write_text(PLAIN_SCRIPT)
    proc = subprocess.run([sys.executable, "plain.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "opt" / "report.json").read_text())
    built = {c["id"]: c for c in report["candidates"]}
    assert f"CHOSEN {report['chosen']}" in proc.stdout and built[report["chosen"]]["status"] == "chosen"
    assert built["onnx/fp32"]["status"] in ("chosen", "ok")       # the baseline was built by a worker
    assert "died" not in json.dumps(report)
    assert len(list((tmp_path / "opt" / ".cache" / "models").glob("*.pt"))) == 1


def test_a_package_in_the_working_folder_imports_without_pythonpath(tmp_path, monkeypatch):
    """`mypkg.models:build` needed an undocumented PYTHONPATH=."""
    from edgeai.imports import import_callable
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text("def build():\n    return 'built'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "mypkg", raising=False)
    assert import_callable("mypkg.models:build", "factory", ModelLoadError)() == "built"
    assert sys.path[-1] == str(tmp_path)   # after the installed packages: a local file never shadows one


def test_a_trusted_pickle_whose_module_is_gone_names_the_module(tmp_path, monkeypatch):
    """It said 'damaged or unknown PyTorch file'."""
    from edgeai.source import load_model
    (tmp_path / "gone_models_xyz.py").write_text(textwrap.dedent("""
        import torch
        class Small(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(3, 2)
            def forward(self, x):
                return self.fc(x)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import gone_models_xyz
    torch.save(gone_models_xyz.Small(), tmp_path / "model.pt")
    monkeypatch.delitem(sys.modules, "gone_models_xyz")
    (tmp_path / "gone_models_xyz.py").unlink()
    with pytest.raises(ModelLoadError, match="code is in module 'gone_models_xyz', which cannot be imported"):
        load_model(str(tmp_path / "model.pt"), inputs=["x:batch,3"], trust_pickle=True)


def test_optimize_never_caches_a_failure_of_the_machine(tmp_path):
    """A build that failed for the environment (a missing package, a full disk) is built again on the
    next run; a failure of the candidate itself stays cached."""
    from test_optimize_search import FakeLab, by_id, search

    from edgeai.optimize.search import Built

    class MachineTrouble(FakeLab):
        def build(self, units, dests, *args, **kwargs):
            out = super().build(units, dests, *args, **kwargs)
            if self.broken:
                out["onnx/int8-dynamic"] = Built("onnx/int8-dynamic", error="needs the 'tflite' extra", transient=True)
            return out

    first = MachineTrouble({"onnx/fp32": 10.0, "onnx/int8-dynamic": 5.0}, {}, fail={"onnx/int8-static"})
    first.broken = True
    result = search(first, tmp_path)
    assert by_id(result)["onnx/int8-dynamic"].status == "failed"
    second = MachineTrouble({"onnx/fp32": 10.0, "onnx/int8-dynamic": 5.0}, {}, fail={"onnx/int8-static"})
    second.broken = False
    result = search(second, tmp_path)
    rebuilt = [c.id for u in second.built_units for c in u.candidates]
    assert "onnx/int8-dynamic" in rebuilt and "onnx/int8-static" not in rebuilt   # the candidate's own failure stays
    assert result.chosen.id == "onnx/int8-dynamic"
