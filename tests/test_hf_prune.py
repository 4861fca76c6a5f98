"""prune (attention heads, FFN width) and distill on Hugging Face models (hf:FOLDER), exported and verified."""
import numpy as np
import pytest

pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("transformers")

import hf_tiny  # noqa: E402

SEQ = 24


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Nothing here may download: Hugging Face's offline switch, read at call time by edgeai.hf."""
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def token_data(path, n: int, seed: int, token_types: bool = True, vocab: int = 200):
    """Random token ids with per-row lengths 4..SEQ (right padding), as `edgeai data text` writes them."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, SEQ + 1, size=n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    feeds = {"input_ids": rng.integers(5, vocab, size=(n, SEQ)).astype(np.int64) * mask, "attention_mask": mask}
    if token_types:
        feeds["token_type_ids"] = np.zeros_like(mask)
    np.savez(path, **feeds)
    return path


def heads_and_ffn(module) -> tuple[list[int], list[int]]:
    """Head count of every attention and FFN width of every layer, as the pruned module's forward reads them."""
    heads, ffn = [], []
    for _, m in module.named_modules():
        for attr in ("num_attention_heads", "n_heads"):
            if isinstance(getattr(m, attr, None), int) and hasattr(m, "attention_head_size"):
                heads.append(getattr(m, attr))
                width = getattr(m, "all_head_size", getattr(m, "dim", None))
                assert width == heads[-1] * m.attention_head_size
        for attr in ("intermediate", "ffn"):
            lin = getattr(getattr(m, attr, None), "dense", None) or getattr(getattr(m, attr, None), "lin1", None)
            if lin is not None:
                ffn.append(lin.out_features)
    return heads, ffn


BUILDERS = {"bert": (hf_tiny.bert, True), "distilbert": (hf_tiny.distilbert, False)}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_prune_removes_heads_and_ffn_width_and_the_export_matches_the_pruned_model(name, tmp_path):
    import torch

    from edgeai.hf import load_hf
    from edgeai.steps.prune import PruneConfig, prune

    build, token_types = BUILDERS[name]
    folder = build(tmp_path / name)
    source = load_hf(f"hf:{folder}")
    before = heads_and_ffn(source.module)
    example = {k: torch.as_tensor(v) for k, v in source.example_inputs.items()}
    pruned, report = prune(source.module, example, PruneConfig(ratio=0.5, round_to=8))
    after = heads_and_ffn(pruned)
    assert before == ([4, 4], [64, 64])
    assert all(a < b for a, b in zip(after[0], before[0])) and all(a >= 1 for a in after[0])
    assert all(a < b for a, b in zip(after[1], before[1]))
    assert report.details["achieved_ratio"] == pytest.approx(0.5, abs=0.05) and not report.details["auto_pinned"]
    heads = [la for la in report.details["layers"] if la["kind"] == "heads"]
    assert [la["units_after"] for la in heads] == after[0]
    assert heads_and_ffn(source.module) == before    # the input model is not modified
    # the pruned module equals the original with the removed heads' and FFN units' readers zeroed: the
    # prune step checks it; here its ONNX export must equal the pruned module on new token data
    from edgeai import export
    from edgeai.recipe import SummaryConfig
    out = export(f"hf:{folder}", tmp_path / "out", steps=({"prune": {"ratio": 0.5, "round_to": 8}},),
                 summary=SummaryConfig(bench=False))
    original, student = out.artifacts
    assert student.parity["passed"] and student.metrics["macs"] < 0.55 * original.metrics["macs"]
    feeds = dict(np.load(token_data(tmp_path / "t.npz", 8, 1, token_types)))
    import onnxruntime as ort
    sess = ort.InferenceSession(str(tmp_path / "out" / student.files[0]))
    got = sess.run(["last_hidden_state"], feeds)[0]
    with torch.no_grad():
        want = pruned(**{k: torch.from_numpy(v) for k, v in feeds.items()})["last_hidden_state"].numpy()
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


def _cosine_to_teacher(student, teacher, feeds) -> float:
    """Mean cosine of the student's last_hidden_state to the teacher's, over real (unpadded) tokens."""
    import torch

    x = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        s, t = (m(**x)["last_hidden_state"].double() for m in (student, teacher))
    cos = torch.nn.functional.cosine_similarity(s, t, dim=-1)
    mask = x["attention_mask"].bool()
    return float(cos[mask].mean())


@pytest.mark.parametrize("name", list(BUILDERS))
def test_distill_matches_hidden_states_by_mse_and_brings_the_pruned_encoder_back_to_its_teacher(name, tmp_path):
    import torch

    from edgeai.hf import load_hf
    from edgeai.steps import StepContext
    from edgeai.steps.distill import DistillConfig, distill
    from edgeai.steps.prune import PruneConfig, prune

    build, token_types = BUILDERS[name]
    # weights 5x the default init: attention and FFN weigh enough in the output for pruning to cost
    # something (at 0.02 the residual stream carries it all and the pruned model keeps cosine 0.9998)
    source = load_hf(f"hf:{build(tmp_path / name, initializer_range=0.1)}")
    example = {k: torch.as_tensor(v) for k, v in source.example_inputs.items()}
    pruned, _ = prune(source.module, example, PruneConfig(ratio=0.5, round_to=8))
    train = dict(np.load(token_data(tmp_path / "train.npz", 256, 0, token_types)))
    test = dict(np.load(token_data(tmp_path / "test.npz", 64, 1, token_types)))
    before = _cosine_to_teacher(pruned, source.module, test)
    ctx = StepContext(teacher=source.module, train_data=train, eval_data=test)
    student, report = distill(pruned, example, DistillConfig(epochs=8, lr=3e-3, batch_size=32, seed=0), ctx)
    after = _cosine_to_teacher(student, source.module, test)
    # hidden states are features: matched value for value, not as a distribution over the hidden units
    assert report.details["loss"] == "mse", report.details["loss_reason"]
    # measured: BERT 0.958 -> 0.995, DistilBERT 0.974 -> 0.994
    assert before < 0.98 and after > before + 2 / 3 * (1 - before), (before, after)


def test_hidden_state_outputs_are_detected_as_features_not_logits():
    import torch

    from edgeai.steps import _distill_loss as losses

    hidden = torch.nn.functional.layer_norm(torch.randn(8, 16, 32) * 3, (32,))
    assert losses.detect(hidden, None).kind == "kl"          # unnamed: as before, a class dimension
    assert losses.detect(hidden, None, "last_hidden_state").kind == "mse"
    normed = torch.nn.functional.normalize(hidden, dim=-1)   # unit rows stay embeddings, matched by cosine
    assert losses.detect(normed, None, "last_hidden_state").kind == "cosine"


@pytest.mark.parametrize("name,ratio", [("vit_classifier", 0.4), ("wav2vec2_classifier", 0.4)])
def test_vit_and_wav2vec2_attention_lose_heads_and_the_export_verifies(name, ratio, tmp_path):
    """ViT (query/key/value under .attention) and wav2vec2 (q_proj/k_proj/v_proj, head count from the
    tensor) layouts: heads go, the logits keep their shape, the artifact matches the pruned model."""
    from edgeai import export
    from edgeai.recipe import SummaryConfig

    folder = getattr(hf_tiny, name)(tmp_path / name)
    out = export(f"hf:{folder}", tmp_path / "out", steps=({"prune": {"ratio": ratio, "round_to": 8}},),
                 summary=SummaryConfig(bench=False))
    original, student = out.artifacts
    details = student.steps[0]["details"]
    heads = [la for la in details["layers"] if la["kind"] == "heads"]
    assert len(heads) == 2 and all(la["units_after"] < la["units_before"] == 4 for la in heads), heads
    assert details["max_abs_diff_vs_masked_original"] < 1e-5 and not details["auto_pinned"]
    assert student.parity["passed"] and student.outputs == original.outputs
    assert student.metrics["macs"] < (1 - ratio + 0.05) * original.metrics["macs"]
