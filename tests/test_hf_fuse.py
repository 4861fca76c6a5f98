"""`onnx:fuse`: onnxruntime's transformer fusions on an exported BERT, verified, and kept only when faster."""
import json

import numpy as np
import pytest

pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("onnxruntime.transformers.optimizer")

import hf_tiny  # noqa: E402
from conftest import factory  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return hf_tiny.bert(tmp_path_factory.mktemp("fuse") / "bert")


def _export(model, out, fuse_options, **options):
    import edgeai
    from edgeai.recipe import SummaryConfig
    return edgeai.export(model, out, quantize=({"fuse": fuse_options},), summary=SummaryConfig(bench=False),
                         **options)


def _ops(path) -> dict:
    import onnx
    ops = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops


def test_fuse_makes_attention_layernorm_gelu_kernels_that_match_unfused_for_any_padding(bert_dir, tmp_path):
    from edgeai import runtime
    outcome = _export(f"hf:{bert_dir}", tmp_path / "out", {"keep": "always"}, export={"exporter": "torchscript"})
    fp32, fused = outcome.artifacts
    ops = _ops(tmp_path / "out" / fused.file)
    layers = hf_tiny.TEXT["num_hidden_layers"]
    assert ops.get("Attention") == layers and ops.get("EmbedLayerNormalization") == 1
    assert ops.get("SkipLayerNormalization") == 2 * layers and ops.get("BiasGelu") == layers
    assert "Softmax" not in ops and "Erf" not in ops
    assert fused.precision == "fp32" and fused.parity["passed"] and fused.parity["tolerance"]["atol"] == 1e-4
    # left padding and a hole in the mask: the fused Attention must read the mask as given
    rng = np.random.default_rng(0)
    ids = rng.integers(5, hf_tiny.TEXT["vocab_size"], size=(3, 20)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[0, :7] = 0
    mask[1, 5:9] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    want = runtime.load(tmp_path / "out" / fp32.file).run(feeds)["last_hidden_state"]
    got = runtime.load(tmp_path / "out" / fused.file).run(feeds)["last_hidden_state"]
    assert np.abs(want - got).max() < 1e-4


@pytest.mark.parametrize("fused_ms,kept", [(0.5, True), (1.0, False)])
def test_fuse_is_kept_only_when_faster_and_the_manifest_says_why(bert_dir, tmp_path, monkeypatch, fused_ms, kept):
    from edgeai.steps import fuse_onnx
    monkeypatch.setattr(fuse_onnx, "p50_ms", lambda path, *a: fused_ms if ".fuse." in str(path) else 1.0)
    _export(f"hf:{bert_dir}", tmp_path / "out", {}, export={"exporter": "torchscript"})
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    names = [a["name"] for a in manifest["artifacts"]]
    if kept:
        fused = manifest["artifacts"][1]
        assert names == ["fp32", "fuse"] and fused["details"]["speedup"] == pytest.approx(2.0)
        assert any("x2.00 faster" in n for n in fused["notes"])
    else:
        assert names == ["fp32"] and not (tmp_path / "out" / "model.fuse.onnx").exists()
        (failed,) = manifest["failed"]
        assert failed["step"] == "onnx:fuse" and "not faster" in failed["error"] and "1.000 ms" in failed["error"]


def test_fuse_leaves_out_a_graph_with_nothing_to_fuse(tmp_path):
    outcome = _export(factory("cnn"), tmp_path / "out", {"keep": "always"}, inputs=["image:batch,3,16,16"])
    assert [a.name for a in outcome.artifacts] == ["fp32"]
    assert "nothing to fuse" in outcome.manifest.failed[0]["error"]
