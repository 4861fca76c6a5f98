"""Tables fit an 80-column terminal (least important columns hidden, and said so), --wide shows every
column, numbers are never cut, sub-millisecond latencies keep 3 significant digits, `info` says what it shows."""
from __future__ import annotations

import pytest

from conftest import factory

pytestmark = pytest.mark.usefixtures("_eighty_columns")


@pytest.fixture
def _eighty_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    from edgeai import console
    monkeypatch.setattr(console, "_wide", False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from edgeai.cli import main
    out = tmp_path_factory.mktemp("term") / "cnn"
    assert main(["export", factory("cnn"), "--input", "image:batch,3,16,16", "-o", str(out), "-q",
                 "--quantize", "int8-dynamic"]) == 0
    return out


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line[:1] in "┏┃┡│└┗" or "──" in line]


def test_fmt_ms_keeps_three_significant_digits_below_a_millisecond():
    from edgeai.console import fmt_ms
    assert [fmt_ms(x) for x in (0.00812, 0.0641, 0.143, 1.5, 12.345, 250.0, None)] == \
        ["0.00812", "0.0641", "0.143", "1.500", "12.35", "250.0", "-"]


def test_export_summary_fits_80_columns_and_names_hidden_columns(exported, cli):
    code, out, _ = cli("info", exported)
    assert code == 0
    lines = _table_lines(out)
    assert lines and max(len(line) for line in lines) <= 80, "\n".join(lines)
    assert "hidden to fit 80 columns: max abs err" in out and "…" not in out
    assert out.startswith("source: ") and "created: " in out and "made with: edgeai" in out
    assert "edgeai info: " in out and "edgeai export: " not in out


def test_wide_prints_every_column(exported, cli):
    code, out, _ = cli("info", exported, "--wide")
    assert code == 0 and "max abs err" in out and "MMACs" in out and "hidden to fit" not in out
    assert max(len(line) for line in _table_lines(out)) > 80


def test_bench_table_fits_80_columns_without_cutting_numbers(exported, cli):
    code, out, _ = cli("bench", exported, "--no-isolate", "--runs", "20", "--warmup", "2")
    assert code == 0
    lines = _table_lines(out) + [line for line in out.splitlines() if line.lstrip()[:2] in ("1 ", "2 ")]
    assert max(len(line) for line in lines) <= 80
    assert "…" not in out and "hidden to fit 80 columns" in out
    row = next(line for line in out.splitlines() if line.lstrip().startswith("1 "))
    assert row.split()[-1].endswith("x")  # the speedup column survives, whole


def test_eval_table_fits_80_columns(exported, cli, tmp_path):
    import numpy as np
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "e.npz", image=x, labels=np.arange(8) % 5)
    code, out, err = cli("eval", exported, "--eval-data", tmp_path / "e.npz")
    assert code == 0, err
    lines = _table_lines(out)
    assert len(lines) >= 4 and max(len(line) for line in lines) <= 80 and "…" not in out


def test_optimize_summary_fits_80_columns_with_long_names_and_reasons(capsys):
    from pathlib import Path
    from types import SimpleNamespace

    from edgeai.optimize.cli import _print_summary

    def cand(id_, status, reason):
        return {"id": id_, "status": status, "size_bytes": 123_456_789, "p50_ms": 0.00812, "speedup": 12.3456,
                "value": 0.998765, "drop": 0.012345, "reason": reason}
    report = {"candidates": [cand("onnx/fp32", "ok", "baseline"),
                             cand("onnx/prune0.75/distill/int8-static", "rejected",
                                  "cosine drop 0.0493 > max_drop 0.01 after the fallback kept 3 nodes in float"),
                             cand("tflite/prune0.5/int8-dynamic", "chosen", "fastest within the budget every round")],
              "notes": [], "formats": []}
    _print_summary(SimpleNamespace(out_dir=Path("out/opt"), report=report, why="fastest",
                                   best_dir=Path("out/opt/best")))
    out = capsys.readouterr().out
    lines = _table_lines(out)
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    assert "12.35" in out and "0.00812" in out and "hidden to fit 80 columns" in out   # numbers whole, not cut


def test_a_pipe_gets_the_natural_width(exported, cli, monkeypatch):
    monkeypatch.delenv("COLUMNS")
    code, out, _ = cli("info", exported)
    assert code == 0 and "max abs err" in out and "hidden to fit" not in out


def test_export_logs_say_how_long_it_has_been_running(tmp_path, cli):
    code, _, err = cli("export", factory("cnn"), "--input", "image:batch,3,16,16", "-o", tmp_path / "o")
    assert code == 0
    assert "[0:0" in err and "loading " in err and "wrote " in err  # "[0:03] loading ..."


def test_optimize_progress_without_a_terminal_prints_plain_lines(capsys):
    from edgeai.optimize.cli import _ProgressDisplay
    with _ProgressDisplay(quiet=False) as display:
        for done, message in ((0, "building onnx/fp32"), (1, "timing round 1"), (1, "timing round 1")):
            display.update({"done": done, "total": 4, "message": message, "seconds_left": 90.0,
                            "best": "onnx/int8-static", "best_speedup": 1.9})
    err = capsys.readouterr().err.splitlines()
    assert err == ["optimize 0/4 | best onnx/int8-static 1.90x | 1.5 min left | building onnx/fp32",
                   "optimize 1/4 | best onnx/int8-static 1.90x | 1.5 min left | timing round 1"]
