"""Hugging Face models (hf:FOLDER): export with Optimum's inputs, parity with transformers, quantize, run."""
import json

import numpy as np
import pytest

pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("transformers")

import hf_tiny  # noqa: E402

BATCH, SEQ = 16, 64


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Nothing here may download: Hugging Face's offline switch, read at call time by edgeai.hf."""
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def padded_batch(vocab: int, batch: int = BATCH, seq: int = SEQ, seed: int = 0) -> dict:
    """Token ids with per-row lengths from 4 to seq (right padding), as a tokenizer would give."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, seq + 1, size=batch)
    lengths[0] = seq
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(5, vocab, size=(batch, seq)).astype(np.int64) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def transformers_hidden(folder, feeds) -> np.ndarray:
    import torch
    from transformers import AutoModel
    model = AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64)
    return (hidden * m).sum(1) / m.sum(1)


@pytest.fixture(scope="module")
def bert_export(tmp_path_factory):
    """A saved BertModel folder exported with no --input flags, plus its int8-dynamic variant."""
    from edgeai.cli import main
    root = tmp_path_factory.mktemp("hf_bert")
    folder = hf_tiny.bert(root / "bert")
    out = root / "out"
    assert main(["export", f"hf:{folder}", "--task", "feature-extraction", "--quantize", "int8-dynamic",
                 "--no-bench", "-o", str(out), "-q"]) == 0
    return folder, out


def test_bert_folder_exports_without_inputs_and_matches_transformers_per_real_token(bert_export):
    from edgeai import runtime
    folder, out = bert_export
    feeds = padded_batch(hf_tiny.TEXT["vocab_size"])
    want = transformers_hidden(folder, feeds)
    got = runtime.load(out / "model.onnx").run(feeds)["last_hidden_state"]
    real = feeds["attention_mask"].astype(bool)
    cos = rowwise_cosine(want, got)[real]
    assert got.shape == (BATCH, SEQ, hf_tiny.TEXT["hidden_size"])
    assert cos.size == real.sum() and cos.min() >= 0.9999
    assert np.abs(want - got)[real].max() < 1e-4


def test_bert_int8_dynamic_keeps_pooled_sentence_embeddings_above_099_cosine(bert_export):
    from edgeai import runtime
    folder, out = bert_export
    feeds = padded_batch(hf_tiny.TEXT["vocab_size"], seed=1)
    want = mean_pool(transformers_hidden(folder, feeds), feeds["attention_mask"])
    got = mean_pool(runtime.load(out / "model.int8-dynamic.onnx").run(feeds)["last_hidden_state"],
                    feeds["attention_mask"])
    assert rowwise_cosine(want, got).min() >= 0.99


def test_bert_manifest_records_model_task_optimum_and_checks_two_batches_and_two_lengths(bert_export):
    from importlib.metadata import version
    folder, out = bert_export
    manifest = json.loads((out / "manifest.json").read_text())
    src = manifest["source"]
    assert (src["kind"], src["task"], src["model_id"], src["weights"]) == (
        "hf", "feature-extraction", str(folder), "model.safetensors")
    assert src["optimum"] == version("optimum") and src["optimum-onnx"] == version("optimum-onnx")
    fp32 = manifest["artifacts"][0]
    assert [i["name"] for i in fp32["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i["shape"] == ["batch", "seq"] and i["dtype"] == "int64" for i in fp32["inputs"])
    assert fp32["outputs"][0]["name"] == "last_hidden_state"
    dims = [c["dims"] for c in fp32["parity"]["checks"]]
    assert len({d["batch"] for d in dims}) == 2 and len({d["seq"] for d in dims}) == 2
    assert fp32["parity"]["passed"] and fp32["parity"]["max_abs"] < 1e-4
