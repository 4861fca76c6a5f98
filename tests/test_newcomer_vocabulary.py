"""One flag vocabulary: new names on every command, old spellings warn and still work, scheme options from the CLI."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import factory
from test_bench import make_mlp, write_export_folder

from edgeai import vocabulary
from edgeai.cli import build_parser
from edgeai.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _warn_every_time(monkeypatch):
    monkeypatch.setattr(vocabulary, "_warned", set())


@pytest.fixture
def folder(tmp_path) -> Path:
    out = write_export_folder(tmp_path / "export", (make_mlp(tmp_path / "a.onnx", 32),
                                                    make_mlp(tmp_path / "b.onnx", 64, seed=1)))
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    return out


def test_run_picks_an_artifact_with_folder_at_name_and_old_flags_warn(cli, folder, tmp_path):
    code, _, err = cli("run", f"{folder}@wide", "--input-data", tmp_path / "in.npz", "-o", tmp_path / "new.npz")
    assert code == 0 and "deprecated" not in err
    code, _, err = cli("run", folder, "--input", tmp_path / "in.npz", "--artifact-name", "wide",
                       "-o", tmp_path / "old.npz")
    assert code == 0
    assert "edgeai: warning: --input is deprecated and goes in the next release; use --input-data" in err
    assert "edgeai: warning: --artifact-name is deprecated and goes in the next release; use FOLDER@ARTIFACT" in err
    with np.load(tmp_path / "new.npz") as new, np.load(tmp_path / "old.npz") as old:
        np.testing.assert_array_equal(new["y"], old["y"])
    code, _, err = cli("run", f"{folder}@wide", "--artifact-name", "fp32", "--input-data", tmp_path / "in.npz",
                       "-o", tmp_path / "x.npz")
    assert code == 2 and "names artifact 'wide' and --artifact-name names 'fp32'" in err
    code, _, err = cli("run", folder, "-o", tmp_path / "x.npz")
    assert code == 2 and "--input-data FILE.npz" in err


def test_eval_takes_eval_data_and_folder_at_name(cli, folder, tmp_path):
    np.savez(tmp_path / "labelled.npz", x=np.load(tmp_path / "in.npz")["x"], labels=np.array([0, 1, 2]))
    code, out, err = cli("eval", f"{folder}@wide", "--eval-data", tmp_path / "labelled.npz", "--json",
                         tmp_path / "e.json")
    assert code == 0, err
    assert [r["artifact"] for r in json.loads((tmp_path / "e.json").read_text())["results"]] == ["wide"]
    code, out, err = cli("eval", folder, "--data", tmp_path / "labelled.npz", "--artifact-name", "fp32",
                         "--artifact-name", "wide", "--json", tmp_path / "e2.json")
    assert code == 0 and "--data is deprecated" in err
    assert "edgeai: warning: --artifact-name is deprecated and goes in the next release; use FOLDER@ARTIFACT" in err
    assert [r["artifact"] for r in json.loads((tmp_path / "e2.json").read_text())["results"]] == ["fp32", "wide"]
    code, out, err = cli("eval", f"{folder}@wide", "--eval-data", tmp_path / "labelled.npz", "--batch", "2",
                         "--json", tmp_path / "e3.json")
    assert code == 0 and "deprecated" not in err
    code, out, err = cli("eval", f"{folder}@wide", "--eval-data", tmp_path / "labelled.npz", "--batch-size", "2",
                         "--json", tmp_path / "e4.json")
    assert code == 0 and "--batch-size is deprecated and goes in the next release; use --batch" in err
    assert json.loads((tmp_path / "e3.json").read_text()) == json.loads((tmp_path / "e4.json").read_text())
    code, out, err = cli("eval", f"{folder}@wide", "--artifact-name", "fp32", "--eval-data", tmp_path / "labelled.npz")
    assert code == 2 and "names artifact 'wide' and --artifact-name names 'fp32'" in err
    code, out, err = cli("eval", f"{folder}@nope", "--eval-data", tmp_path / "labelled.npz")
    assert code == 2 and "nope" in err and "fp32" in err and "wide" in err   # the known artifacts are named


def test_optimize_format_is_one_flag_and_formats_is_an_alias(capsys):
    base = ["optimize", "m.py:f", "-o", "o", "--eval-data", "e.npz", "--max-drop", "1"]
    assert build_parser().parse_args([*base, "--format", "onnx,tflite"]).formats == ("onnx", "tflite")
    assert build_parser().parse_args([*base, "--formats", "onnx,tflite"]).formats == ("onnx", "tflite")
    assert "--formats is deprecated" in capsys.readouterr().err


def test_python_formats_keyword_is_renamed_with_a_future_warning():
    options = {"formats": ["onnx"]}
    with pytest.warns(FutureWarning, match="formats= is deprecated.*use format="):
        assert vocabulary.renamed_keywords(options, {"formats": "format"}) == {"format": ["onnx"]}
    with pytest.raises(ConfigError, match="pass format= only"):
        vocabulary.renamed_keywords({"formats": 1, "format": 2}, {"formats": "format"})


def _subparsers():
    parser = build_parser()
    return next(a for a in parser._actions if a.choices and "run" in a.choices).choices


def test_provider_choices_are_the_same_on_every_command():
    choices = {name: next(a.choices for a in p._actions if "--provider" in a.option_strings)
               for name, p in _subparsers().items() if any("--provider" in a.option_strings for a in p._actions)}
    assert set(choices) == {"run", "eval", "bench"}
    assert len({tuple(c) for c in choices.values()}) == 1


def test_the_vocabulary_page_names_flags_the_commands_have():
    """Each flag in the table's CLI column exists on each command of its row (a renamed flag fails here)."""
    subs = _subparsers()
    rows = [line.split("|")[1:-1] for line in (REPO / "docs" / "cli-vocabulary.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| concept")]
    checked = 0
    for concept, flags, commands, *_ in rows:
        names = re.findall(r"`(--[a-z-]+)", flags)
        for command in re.findall(r"\b(export|optimize|run|eval|bench)\b", commands.split("(")[0]):
            options = {o for a in subs[command]._actions for o in a.option_strings}
            for flag in names:
                assert flag in options, (concept, command, flag)
                checked += 1
    assert checked >= 20


def test_quantize_option_is_typed_and_checked_against_the_scheme():
    q = vocabulary.with_scheme_options(({"int8-dynamic": {}}, {"int8-full": {}}),
                                       ["int8-dynamic.op_types=MatMul,Conv", "int8-static.per_channel=false",
                                        "int8-dynamic.per_channel=true"], "onnx")
    assert q == ({"int8-dynamic": {"op_types": ("MatMul", "Conv"), "per_channel": True}},
                 {"int8-full": {"per_channel": False}})
    with pytest.raises(ConfigError, match="has no option 'op_type'; known: .*op_types"):
        vocabulary.with_scheme_options(({"int8-dynamic": {}},), ["int8-dynamic.op_type=Conv"], "onnx")
    with pytest.raises(ConfigError, match="takes true or false, got 'maybe'"):
        vocabulary.with_scheme_options(({"int8-dynamic": {}},), ["int8-dynamic.per_channel=maybe"], "onnx")
    with pytest.raises(ConfigError, match="add --quantize fp16"):
        vocabulary.with_scheme_options(({"int8-dynamic": {}},), ["fp16.keep_io_types=true"], "onnx")
    with pytest.raises(ConfigError, match="expected SCHEME.KEY=VALUE"):
        vocabulary.with_scheme_options(({"int8-dynamic": {}},), ["op_types=Conv"], "onnx")


def test_quantize_option_puts_conv_in_int8_dynamic_as_the_note_says(cli, tmp_path):
    """The note said "add 'Conv' to op_types" with no way to do it from the CLI."""
    base = ["export", factory("cnn"), "--input", "image:batch,3,16,16", "--quantize", "int8-dynamic", "--no-bench"]
    code, _, err = cli(*base, "-o", tmp_path / "plain", "-q")
    assert code == 0, err
    code, _, err = cli(*base, "--quantize-option", "int8-dynamic.op_types=MatMul,Gemm,Conv", "-o",
                       tmp_path / "conv", "-q")
    assert code == 0, err
    plain, conv = (json.loads((tmp_path / d / "manifest.json").read_text())["artifacts"][1] for d in ("plain", "conv"))
    assert any("add 'Conv' to op_types: --quantize-option" in n for n in plain["notes"])
    assert not any("Conv node(s)" in n for n in conv["notes"])
    assert conv["steps"][-1]["config"]["op_types"] == ["MatMul", "Gemm", "Conv"]
    assert conv["size_bytes"] < plain["size_bytes"]     # the conv weights are INT8 now
