"""The in-place KV cache (GroupQueryAttention past_present_share_buffer) against the concatenating one."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from decoder_kit import zoo_export
from edgeai import runtime
from edgeai.errors import ConfigError
from edgeai.exporters._decoder_verify import runtime_greedy
from edgeai.runtime.generate import DecoderSession, decoder_details
from edgeai.runtime.generate_cache import MIN_CAPACITY

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory) -> Path:
    return zoo_export(tmp_path_factory.mktemp("kv_gpt2"), "tiny_gpt2")


@pytest.fixture(scope="module")
def llama_export(tmp_path_factory) -> Path:
    return zoo_export(tmp_path_factory.mktemp("kv_llama"), "tiny_llama")


def _both(folder: Path) -> tuple[DecoderSession, DecoderSession]:
    return runtime.load(folder, kv_cache="shared", threads=1), runtime.load(folder, kv_cache="concat", threads=1)


def test_a_fused_export_says_it_can_share_and_auto_picks_the_shared_cache_on_cpu(gpt2_export):
    session = runtime.load(gpt2_export)
    assert decoder_details(gpt2_export)["past_present_share_buffer"] is True
    assert session.kv_cache == "shared" and session.describe()["kv_cache"] == "shared"


@pytest.mark.parametrize("export", ["gpt2_export", "llama_export"])
def test_shared_and_concat_caches_give_identical_greedy_tokens_and_logits(export, request):
    """GPT-2 (MHA, learned positions) and Llama-style (rotary inside GroupQueryAttention, 2 kv heads for 4)."""
    shared, concat = _both(request.getfixturevalue(export))
    vocab = shared.decoder["vocab_size"]
    for ids in ([1, 5, 9], list(range(3, 3 + 40)), [int(i) for i in np.random.default_rng(0).integers(1, vocab, 17)]):
        assert runtime_greedy(shared, ids, 40) == runtime_greedy(concat, ids, 40)
        np.testing.assert_allclose(shared.prefill(ids), concat.prefill(ids), atol=1e-5)
        np.testing.assert_allclose(shared.step(7), concat.step(7), atol=1e-5)
        np.testing.assert_allclose(shared.logits(ids), concat.logits(ids), atol=1e-5)


def test_a_step_writes_its_keys_into_the_same_buffer_and_leaves_the_past_untouched(gpt2_export):
    """No copy of the cache per step: the bound buffer is the one the step wrote into, at the next position only."""
    session = runtime.load(gpt2_export, kv_cache="shared", threads=1)
    session.reserve(48)
    session.prefill(list(range(2, 12)))   # positions 0..9
    buffers = session._shared.buffers
    addresses = [b.ctypes.data for b in buffers]
    before = [b.copy() for b in buffers]
    assert not before[0][:, :, 10:].any() and before[0][:, :, :10].any()
    for _ in range(3):
        session.step(5)                   # positions 10, 11, 12
    assert [b.ctypes.data for b in session._shared.buffers] == addresses
    for old, new in zip(before, session._shared.buffers):
        np.testing.assert_array_equal(new[:, :, :10], old[:, :, :10])   # the past is read in place
        assert np.abs(new[:, :, 10:13]).sum(axis=(0, 1, 3)).all() and not new[:, :, 13:].any()


def test_the_shared_cache_grows_past_its_capacity_keeping_what_it_holds(gpt2_export):
    shared, concat = _both(gpt2_export)
    ids = list(range(3, 3 + MIN_CAPACITY - 4))
    assert runtime_greedy(shared, ids, 20) == runtime_greedy(concat, ids, 20)   # grows during the steps
    assert shared._shared.capacity == 2 * MIN_CAPACITY


def test_generate_reserves_the_whole_generation_once(gpt2_export):
    session = runtime.load(gpt2_export, kv_cache="shared", threads=1)
    out = session.generate(list(range(3, 23)), 100, stop_ids=[-1])
    assert session._shared.capacity == 20 + 100 and len(out.tokens) <= 100


def test_a_graph_that_concatenates_takes_concat_and_refuses_shared(gpt2_export):
    details = {**decoder_details(gpt2_export), "past_present_share_buffer": False}
    model = gpt2_export / "model.onnx"
    assert DecoderSession(model, details).kv_cache == "concat"
    with pytest.raises(ConfigError, match="concatenates"):
        DecoderSession(model, details, kv_cache="shared")
    with pytest.raises(ConfigError, match="known: auto, shared, concat"):
        DecoderSession(model, details, kv_cache="inplace")


def test_an_export_from_before_the_key_shares_when_its_graph_is_fused(gpt2_export, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(gpt2_export, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["artifacts"][0]
    del entry["details"]["decoder"]["past_present_share_buffer"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert decoder_details(folder)["past_present_share_buffer"] is True
    entry["steps"][0]["config"]["graph"] = "traced"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert "past_present_share_buffer" not in decoder_details(folder)


def test_logits_at_every_position_twice_in_a_row_with_different_lengths(gpt2_export):
    """A regression: the all-positions logits output kept its first shape, so a longer second call failed."""
    shared, concat = _both(gpt2_export)
    for n in (5, 12, 3):
        ids = list(range(4, 4 + n))
        np.testing.assert_allclose(shared.logits(ids), concat.logits(ids), atol=1e-5)


def test_generate_cli_kv_cache_flag_picks_the_mode_with_the_same_tokens(gpt2_export, tmp_path, capsys):
    from edgeai.cli import main

    got = {}
    for mode in ("auto", "concat", "shared"):
        out = tmp_path / f"{mode}.json"
        assert main(["generate", str(gpt2_export), "--prompt", "hello", "--max-new-tokens", "12", "--threads", "1",
                     "--kv-cache", mode, "--json", str(out)]) == 0
        got[mode] = json.loads(out.read_text())
    assert got["auto"]["kv_cache"] == got["shared"]["kv_cache"] == "shared" and got["concat"]["kv_cache"] == "concat"
    assert got["auto"]["tokens"] == got["concat"]["tokens"] == got["shared"]["tokens"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["generate", str(gpt2_export), "--prompt", "x", "--kv-cache", "inplace"])
    assert "invalid choice: 'inplace'" in capsys.readouterr().err
