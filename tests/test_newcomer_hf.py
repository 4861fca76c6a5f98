"""HF at full length: verification's second shape stays inside the model's position table."""
import json

import numpy as np
import pytest

pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("transformers")

import hf_tiny  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_second_size_goes_below_a_limit_it_would_pass():
    from edgeai.verify import second_size
    assert second_size(16, None) == 19
    assert second_size(16, 512) == 19
    assert second_size(512, 512) == 509          # --max-length 512 on a 512-position BERT: 515 would overflow
    assert second_size(2, 2) is None             # nothing else fits: the dim is checked at its example size


def test_roberta_position_table_limit_leaves_out_the_padding_offset():
    from transformers import RobertaConfig, RobertaModel

    from edgeai.hf import _max_dims
    from edgeai.specs import TensorSpec
    model = RobertaModel(RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=16, max_position_embeddings=34, pad_token_id=1))
    spec = [TensorSpec("input_ids", ("batch", "seq"), "int64")]
    assert _max_dims(model, spec) == {"max_dims": {"seq": 32}}   # positions start after padding_idx 1


def test_hf_recipe_with_data_at_the_full_length_verifies_below_it(tmp_path):
    """recipes/hf_text_encoder.yaml set up as its comments say (eval data padded to the model's length):
    verification probed seq=N+3, past the position table, and every export path failed ("the artifact
    failed to run at batch=2, seq=131 ... BroadcastIterator")."""
    from edgeai.cli import main
    hf_tiny.bert(tmp_path / "model", max_position_embeddings=32)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 200, size=(8, 32)).astype(np.int64)
    np.savez(tmp_path / "sentences.npz", input_ids=ids, attention_mask=np.ones_like(ids),
             token_type_ids=np.zeros_like(ids))
    (tmp_path / "enc.yaml").write_text("model: hf:model\ntask: feature-extraction\nexport: {exporter: torchscript}\n"
                                       "data: {eval: sentences.npz}\nsummary: {bench: false}\noutput: out\n")
    assert main(["export", str(tmp_path / "enc.yaml"), "-o", str(tmp_path / "out"), "-q"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"]["max_dims"] == {"seq": 32}
    fp32 = manifest["artifacts"][0]
    shapes = [c["dims"] for c in fp32["parity"]["checks"] if "samples" not in c["dims"]]  # not the eval batches
    assert shapes == [{"batch": 2, "seq": 32}, {"batch": 5, "seq": 32}, {"batch": 2, "seq": 29}]
    assert max(o["max_abs"] for c in fp32["parity"]["checks"] for o in c["outputs"].values()) < 1e-4
    assert fp32["metrics"]["cosine"] > 0.9999
