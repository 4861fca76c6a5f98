"""Decoders in `edgeai eval --text` (perplexity, top-1 agreement, KL) and `edgeai bench` (TTFT, tokens/s)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import decoder_kit as dk
from edgeai.bench import bench
from edgeai.bench.kv import open_decoder
from edgeai.errors import DataError, InputSpecError
from edgeai.evaluate.text import load_tokens, score_sessions, windows
from edgeai.manifest import Manifest

FAST = {"prompt_lengths": [8, 24], "depths": [8, 40], "new_tokens": 8, "repeats": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """FP32 + int4-weight + int8-weight of a random contract decoder, and an eval text."""
    root = tmp_path_factory.mktemp("decoder-export")
    dk.export_folder(root, quantize=("int4-weight", "int8-weight"))
    (root / "eval.txt").write_text(dk.text(400, seed=7))
    return root


@pytest.mark.parametrize("n,window,stride", [(1000, 128, 64), (1000, 128, 128), (50, 128, 64), (129, 128, 1)])
def test_windows_score_every_token_after_the_first_exactly_once(n, window, stride):
    targets = [t for begin, end, first in windows(n, window, stride) for t in range(first, end)]
    assert targets == list(range(1, n))
    assert all(end - begin <= window and begin <= first - 1 for begin, end, first in windows(n, window, stride))


def test_perplexity_of_one_window_is_exp_mean_nll_of_the_full_logits(folder):
    ids = load_tokens(folder / "eval.txt", folder)[:100]
    session = open_decoder(folder)
    logits = session.logits(ids).astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    expected = float(np.exp(-logp[np.arange(99), ids[1:]].mean()))
    score, = score_sessions({"fp32": session}, ids, window=128, stride=64)
    assert score.tokens == 99 and score.perplexity == pytest.approx(expected, rel=1e-9)
    assert score.top1_agreement == 1.0 and score.kl == 0.0 and score.ppl_increase == 0.0
    # shorter windows see less context: same tokens scored, a different (finite) perplexity
    short, = score_sessions({"fp32": session}, ids, window=16, stride=8)
    assert short.tokens == 99 and np.isfinite(short.perplexity) and short.perplexity != score.perplexity


def test_eval_text_cli_reports_perplexity_agreement_and_kl_per_artifact(folder, tmp_path, capsys):
    from edgeai.cli import main
    out = tmp_path / "eval.json"
    assert main(["eval", str(folder), "--text", str(folder / "eval.txt"), "--window", "64", "--stride", "32",
                 "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "edgeai.eval/1" and doc["mode"] == "text" and doc["reference"] == "fp32"
    assert set(doc["perplexity"]) == {"fp32", "int4-weight", "int8-weight"}
    r = {x["artifact"]: x for x in doc["results"]}
    assert r["fp32"]["top1_agreement"] == 1.0 and r["fp32"]["kl"] == 0.0
    # INT8 weights stay closer to FP32 than INT4 by every measure
    assert r["int8-weight"]["kl"] < r["int4-weight"]["kl"] / 4
    assert r["int8-weight"]["top1_agreement"] > r["int4-weight"]["top1_agreement"]
    assert abs(r["int8-weight"]["ppl_increase"]) < 0.01
    for x in r.values():
        assert x["perplexity"] == pytest.approx(doc["perplexity"]["fp32"] * (1 + x["ppl_increase"]), rel=1e-9)
    assert "int4-weight" in capsys.readouterr().out


def test_eval_text_refuses_a_window_past_the_models_positions_and_missing_text(folder):
    from edgeai.cli import main
    assert main(["eval", str(folder), "--text", str(folder / "eval.txt"), "--window", "1024"]) == 2
    with pytest.raises(DataError, match="does not exist"):
        load_tokens(folder / "missing.txt", folder)


def test_variants_carry_the_decoder_layout_tokenizer_and_size(folder):
    manifest = Manifest.read(folder)
    fp32, int4, int8 = (manifest.get(n) for n in ("fp32", "int4-weight", "int8-weight"))
    assert int4.details["decoder"] == fp32.details["decoder"] and "tokenizer.json" in int4.extra_files
    assert int4.steps[-1]["type"] == "onnx:int4-weight" and int4.parity["probe_logits_cosine"] > 0.9
    model_bytes = {e.name: (folder / e.file).stat().st_size for e in (fp32, int4, int8)}
    assert model_bytes["int4-weight"] / model_bytes["fp32"] < 0.2 < model_bytes["int8-weight"] / model_bytes["fp32"] < 0.32
    session = open_decoder(folder, "int4-weight")     # digests checked, the tokenizer found through the manifest
    assert session.decode(session.encode("the cat sat")) == "the cat sat"


def test_bench_times_a_decoder_as_a_generator_in_fresh_processes(folder, tmp_path):
    report = bench([folder], decoder=FAST, warmup=1)
    assert [r.status for r in report.results] == ["ok"] * 3 and all(r.isolated for r in report.results)
    d = report.to_dict()
    assert d["config"]["decoder"] == FAST
    for r in d["results"]:
        dec = r["decoder"]
        assert [p["tokens"] for p in dec["prompts"]] == [8, 24] and [x["depth"] for x in dec["decode"]] == [8, 40]
        assert dec["layers"] == 2 and dec["kv_heads"] == 4 and dec["head_dim"] == 16 and dec["vocab_size"] == 256
        assert all(p["ttft_ms"] > 0 and p["prefill_tokens_per_s"] == pytest.approx(p["tokens"] / p["ttft_ms"] * 1e3)
                   for p in dec["prompts"])
        assert all(x["decode_tokens_per_s"] > 0 for x in dec["decode"])
        assert dec["decode_tokens_per_s"] == dec["decode"][0]["decode_tokens_per_s"]
        assert r["timing"]["n"] == 8 and r["peak_rss_bytes"] > 0 and r["load_ms"] > 0   # per new token at depth 8
    path = report.write_json(tmp_path / "b.json")
    assert json.loads(path.read_text())["results"][1]["decoder"]["prompts"][0]["tokens"] == 8


def test_bench_decoder_drops_lengths_past_the_model_and_refuses_bad_options(tmp_path):
    small = dk.export_folder(tmp_path / "small", max_positions=32)
    report = bench([small], decoder=FAST, warmup=0, isolate=False)
    r = report.results[0]
    assert r.ok and [p["tokens"] for p in r.decoder["prompts"]] == [8, 24] and [x["depth"] for x in r.decoder["decode"]] == [8]
    assert any("skipped depth 40: past the model's 32 positions" in n for n in r.notes)
    bad = bench([small], decoder={**FAST, "depths": [30]}, warmup=0, isolate=False).results[0]
    assert not bad.ok and "do not fit" in bad.error
    from edgeai.cli import main
    assert main(["bench", str(small), "--prompt-lengths", "8,x"]) == 2
    with pytest.raises(InputSpecError, match="positive"):
        from edgeai.bench.results import BenchConfig
        from edgeai.bench.decoder import DecoderOptions
        DecoderOptions.from_config(BenchConfig(decoder={"new_tokens": 0}))


def test_a_bare_onnx_decoder_file_is_benchmarked_with_a_note(tmp_path):
    path = dk.contract_decoder(tmp_path / "model.onnx")
    r = bench([path], decoder=FAST, warmup=0, isolate=False).results[0]
    assert r.ok and r.decoder["decode"][0]["new_tokens"] == 8
    assert any("loaded twice" in n for n in r.notes)


@pytest.mark.slow
def test_bench_over_ssh_times_the_decoder_with_the_devices_worker(folder, tmp_path_factory):
    """The device's plain install (no torch) runs the same worker: the decoder section comes back over ssh."""
    from devicekit import SSH_HOST, Sshd, device_venv
    from edgeai.bench.devices import parse_device
    python = device_venv(tmp_path_factory.getbasetemp())
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    try:
        device = parse_device(f"ssh://{SSH_HOST}", ssh_config=str(server.ssh_config), device_python=str(python))
        report = bench([f"{folder}@int4-weight"], device=device, decoder=FAST, warmup=1)
    finally:
        server.stop()
    d = report.to_dict()
    r = d["results"][0]
    assert r["status"] == "ok", r["error"]
    assert d["env"]["device"] == f"ssh://{SSH_HOST}" and d["env"]["versions"]["torch"] is None
    assert [p["tokens"] for p in r["decoder"]["prompts"]] == [8, 24] and r["decoder"]["decode_tokens_per_s"] > 0


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="Linux: VmHWM")
def test_a_workers_peak_rss_is_its_own_not_the_parents(tmp_path):
    """getrusage's ru_maxrss survives exec: a worker spawned by a big parent reported the parent's RSS."""
    path = dk.contract_decoder(tmp_path / "model.onnx")
    big = np.ones(300_000_000 // 8)          # 300 MB resident in this (the parent) process
    r = bench([path], decoder={**FAST, "depths": [8]}, warmup=0).results[0]
    assert r.ok and big[-1] == 1.0
    assert r.rss_before_load_bytes < r.peak_rss_bytes < 250e6
