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


# ---------------------------------------------------------------------------- safety and resolution

@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return hf_tiny.bert(tmp_path_factory.mktemp("hf_bert_dir") / "bert")


def test_pickled_weights_need_trust_pickle_and_load_with_it(tmp_path, cli):
    from edgeai.source import load_model
    folder = hf_tiny.bert(tmp_path / "bert_bin", safe=False)
    assert (folder / "pytorch_model.bin").is_file() and not (folder / "model.safetensors").exists()
    code, _, err = cli("export", f"hf:{folder}", "-o", tmp_path / "out")
    assert code == 2 and "pytorch_model.bin" in err and "--trust-pickle" in err
    assert not (tmp_path / "out" / "manifest.json").exists()
    source = load_model(f"hf:{folder}", trust_pickle=True)
    assert source.provenance["weights"] == "pytorch_model.bin"
    assert source.provenance["task"] == "feature-extraction"


def test_remote_code_models_are_refused(tmp_path, bert_dir, cli):
    import shutil
    folder = tmp_path / "custom"
    shutil.copytree(bert_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    code, _, err = cli("export", f"hf:{folder}", "-o", tmp_path / "out")
    assert code == 2 and "trust_remote_code" in err


def test_task_without_weights_for_its_head_is_refused(bert_dir, tmp_path, cli):
    code, _, err = cli("export", f"hf:{bert_dir}", "--task", "text-classification", "-o", tmp_path / "out")
    assert code == 2 and "no weights" in err and "classifier" in err


def test_unknown_task_lists_the_supported_ones(bert_dir, tmp_path, cli):
    code, _, err = cli("export", f"hf:{bert_dir}", "--task", "image-classification", "-o", tmp_path / "out")
    assert code == 2 and "not supported for bert" in err and "fill-mask" in err and "feature-extraction" in err


def test_input_flags_are_refused_for_hf_models(bert_dir, tmp_path, cli):
    code, _, err = cli("export", f"hf:{bert_dir}", "--input", "input_ids:batch,seq:int64", "-o", tmp_path / "out")
    assert code == 2 and "Optimum" in err


def test_hub_id_not_in_cache_fails_offline_without_downloading(tmp_path, monkeypatch, cli):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    code, _, err = cli("export", "hf:some-org/not-cached", "-o", tmp_path / "out")
    assert code == 2 and "not in the local cache" in err and "HF_HUB_OFFLINE" in err


def test_hub_id_resolves_from_local_cache_and_records_its_revision(tmp_path, monkeypatch, bert_dir):
    import shutil

    from huggingface_hub import constants

    from edgeai.source import load_model
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--tiny-org--tiny-bert"
    shutil.copytree(bert_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    source = load_model("hf:tiny-org/tiny-bert")
    assert (source.provenance["model_id"], source.provenance["revision"]) == ("tiny-org/tiny-bert", commit)
    assert [s.name for s in source.input_specs] == ["input_ids", "attention_mask", "token_type_ids"]


def test_hf_module_takes_inputs_by_position_or_name_like_other_sources(bert_dir):
    """Model steps call the module with keyword inputs, exporters and verify positionally."""
    import torch

    from edgeai.source import load_model
    source = load_model(f"hf:{bert_dir}")
    with torch.inference_mode():
        by_name = source.module(**source.torch_inputs())["last_hidden_state"]
        by_position = source.module(*source.torch_inputs().values())["last_hidden_state"]
    assert by_name.shape == (2, 16, hf_tiny.TEXT["hidden_size"]) and torch.equal(by_name, by_position)


def test_example_inputs_file_sets_the_example_sizes_and_must_hold_every_input(bert_dir, tmp_path):
    from edgeai.errors import DataError
    from edgeai.source import load_model
    feeds = padded_batch(hf_tiny.TEXT["vocab_size"], batch=3, seq=10)
    np.savez(tmp_path / "x.npz", **feeds, labels=np.arange(3))
    source = load_model(f"hf:{bert_dir}", example_inputs=tmp_path / "x.npz")
    assert source.example_dims == {"batch": 3, "seq": 10} and "labels" not in source.example_inputs
    assert np.array_equal(source.example_inputs["input_ids"], feeds["input_ids"])
    np.savez(tmp_path / "y.npz", input_ids=feeds["input_ids"], attention_mask=feeds["attention_mask"])
    with pytest.raises(DataError, match="token_type_ids"):
        load_model(f"hf:{bert_dir}", example_inputs=tmp_path / "y.npz")


def test_task_is_refused_for_models_that_are_not_hf(tmp_path, cli):
    from conftest import factory
    code, _, err = cli("export", factory("cnn"), "--input", "image:batch,3,16,16", "--task", "feature-extraction",
                       "-o", tmp_path / "out")
    assert code == 2 and "--task is for Hugging Face models" in err


def test_missing_folder_is_a_one_line_error(tmp_path, cli):
    code, _, err = cli("export", f"hf:{tmp_path}/nope", "-o", tmp_path / "out", "-q")
    lines = [line for line in err.strip().splitlines() if line.startswith("edgeai: error:")]
    assert code == 2 and len(lines) == 1 and "does not exist" in lines[0] and "Traceback" not in err


# ---------------------------------------------------------------------------- other architectures

CLASSIFIERS = {
    "distilbert": (hf_tiny.distilbert_classifier, "text-classification", ["input_ids", "attention_mask"]),
    "vit": (hf_tiny.vit_classifier, "image-classification", ["pixel_values"]),
    "wav2vec2": (hf_tiny.wav2vec2_classifier, "audio-classification", ["input_values"]),
}


def _classifier_feeds(name: str) -> dict:
    rng = np.random.default_rng(3)
    if name == "distilbert":
        return {k: v for k, v in padded_batch(200, batch=3, seq=24).items() if k != "token_type_ids"}
    if name == "vit":
        return {"pixel_values": rng.standard_normal((3, 3, 32, 32)).astype(np.float32)}
    return {"input_values": rng.standard_normal((3, 4000)).astype(np.float32)}


def _transformers_logits(folder, feeds) -> np.ndarray:
    import torch
    from transformers import AutoConfig
    import transformers
    cls = getattr(transformers, AutoConfig.from_pretrained(folder).architectures[0])
    with torch.inference_mode():
        return cls.from_pretrained(folder).eval()(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_classifier_task_is_inferred_exported_quantized_and_run_like_transformers(name, tmp_path, cli):
    import edgeai
    from edgeai.recipe import SummaryConfig
    build, task, inputs = CLASSIFIERS[name]
    folder = build(tmp_path / name)
    outcome = edgeai.export(f"hf:{folder}", tmp_path / "out", quantize=({"int8-dynamic": {}},),
                            summary=SummaryConfig(bench=False))
    assert outcome.manifest.source["task"] == task
    fp32, int8 = outcome.artifacts
    assert [i["name"] for i in fp32.inputs] == inputs and [o["name"] for o in fp32.outputs] == ["logits"]
    assert fp32.parity["passed"] and int8.parity["passed"]
    feeds = _classifier_feeds(name)
    np.savez(tmp_path / "feeds.npz", **feeds)
    want = _transformers_logits(folder, feeds)
    for artifact, tol in (("fp32", 1e-4), ("int8-dynamic", 0.05 * np.abs(want).max() + 1e-3)):
        code, out, _ = cli("run", f"{tmp_path / 'out'}@{artifact}", "--input-data", tmp_path / "feeds.npz",
                           "-o", tmp_path / f"{artifact}.npz")
        assert code == 0 and "logits" in out
        got = np.load(tmp_path / f"{artifact}.npz")["logits"]
        assert got.shape == want.shape and np.abs(got - want).max() <= tol


@pytest.mark.slow
def test_text_encoder_recipe_runs_on_a_saved_folder_and_text_data(tmp_path, cli):
    """recipes/hf_text_encoder.yaml as shipped, with its model folder and eval text made here."""
    import shutil
    from pathlib import Path

    recipe = tmp_path / "hf_text_encoder.yaml"
    shutil.copy(Path(__file__).parent.parent / "recipes" / "hf_text_encoder.yaml", recipe)
    model = hf_tiny.bert(tmp_path / "hf_text_encoder" / "model")
    hf_tiny.wordpiece_vocab(model, ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"])
    (tmp_path / "s.txt").write_text("the cat sat on a mat\na dog ran\nthe dog sat\ncat\n" * 4)
    assert cli("data", "text", tmp_path / "s.txt", "--tokenizer", f"hf:{model}", "--max-length", "10",
               "-o", tmp_path / "hf_text_encoder" / "sentences.npz")[0] == 0
    code, out, err = cli("export", recipe, "-o", tmp_path / "out", "--no-bench", "-q")
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    arts = {a["name"]: a for a in manifest["artifacts"]}
    assert manifest["source"]["task"] == "feature-extraction" and "int8-dynamic" in arts
    assert arts["int8-dynamic"]["metrics"]["cosine"] >= 0.99 and arts["int8-dynamic"]["metrics"]["eval_samples"] == 16
    fuse = arts.get("fuse") or manifest["failed"][0]
    assert "speedup" in fuse.get("details", {}) or "not faster" in fuse["error"]
