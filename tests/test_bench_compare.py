"""`edgeai bench --compare BASE.json NEW.json [--threshold]`: ratios per target and the exit status users' CI reads."""
from __future__ import annotations

import json

import pytest

from edgeai.bench import BenchConfig, TimingStats
from edgeai.bench.compare import compare, load_report, parse_threshold
from edgeai.bench.env import environment
from edgeai.bench.results import BenchReport, BenchResult
from edgeai.errors import InputSpecError


def report(p50s: dict[str, float | None], cpu: str | None = None) -> BenchReport:
    """A report whose targets have these p50s (None: the target failed)."""
    results = []
    for name, p50 in p50s.items():
        if p50 is None:
            results.append(BenchResult(name, "file", name, None, "onnx", "failed", True, error="boom"))
        else:
            timing = TimingStats.from_samples([p50 * 0.9, p50, p50 * 1.1])
            results.append(BenchResult(name, "file", name, None, "onnx", "ok", True, timing=timing))
    env = environment(1, "cpu")
    if cpu:
        env["cpu"] = {**env["cpu"], "model": cpu}
    return BenchReport.build(env, BenchConfig(), results, "2026-01-01T00:00:00+00:00")


def write(tmp_path, name, rep) -> str:
    path = tmp_path / name
    rep.write_json(path)
    return str(path)


def test_threshold_parses_percent_and_fraction():
    assert parse_threshold("5%") == pytest.approx(0.05) and parse_threshold("0.1") == 0.1
    for bad in ("fast", "-3%", ""):
        with pytest.raises(InputSpecError):
            parse_threshold(bad)


def test_ratios_and_regressions_past_the_threshold():
    base = report({"a.onnx": 1.0, "b.onnx": 2.0, "c.onnx": 4.0, "gone.onnx": 1.0})
    new = report({"a.onnx": 1.04, "b.onnx": 2.2, "c.onnx": 2.0, "new.onnx": 1.0})
    rows = {r.target: r for r in compare(base, new, 0.05)}
    assert rows["a.onnx"].ratio == pytest.approx(1.04) and not rows["a.onnx"].regression
    assert rows["b.onnx"].ratio == pytest.approx(1.10) and rows["b.onnx"].regression
    assert rows["c.onnx"].ratio == pytest.approx(0.5) and not rows["c.onnx"].regression
    assert rows["gone.onnx"].note == "only in the base report" and rows["new.onnx"].note == "only in the new report"


def test_a_target_that_now_fails_is_a_regression():
    rows = compare(report({"a.onnx": 1.0}), report({"a.onnx": None}), 0.05)
    assert rows[0].regression and rows[0].note == "failed in the new report"


def test_reports_with_renamed_targets_match_by_position():
    rows = compare(report({"v1/m.onnx": 1.0}), report({"v2/m.onnx": 1.5}), 0.05)
    assert rows[0].target == "v1/m.onnx -> v2/m.onnx" and rows[0].regression


def test_cli_exit_status_is_1_on_a_regression_and_0_within_the_threshold(tmp_path, cli):
    base = write(tmp_path, "base.json", report({"a.onnx": 1.0, "b.onnx": 2.0}))
    slower = write(tmp_path, "slower.json", report({"a.onnx": 1.0, "b.onnx": 2.3}, cpu="Other CPU"))
    code, out, err = cli("bench", "--compare", base, slower, "--threshold", "10%")
    assert code == 1 and "REGRESSION" in out and "1.150" in out and "1 regression(s) past 10.0%" in out
    assert "the reports differ in CPU" in out
    code, out, err = cli("bench", "--compare", base, slower, "--threshold", "20%")
    assert code == 0 and "REGRESSION" not in out


def test_compare_table_fits_80_columns_with_long_target_names(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    long = {f"out/a-rather-long-export-folder-name/model.int8-static-{i}.onnx": 1.0 + i for i in range(3)}
    base = write(tmp_path, "base.json", report(long))
    new = write(tmp_path, "new.json", report({k: v * 1.3 for k, v in long.items()}))
    code, out, err = cli("bench", "--compare", base, new, "--threshold", "10%")
    assert code == 1, err
    table = [line for line in out.splitlines() if line[:1] in "┏┃┡│└┗"]
    assert len(table) >= 6 and max(len(line) for line in table) <= 80, "\n".join(table)
    assert out.count("REGRESSION") >= 3 and "1.300" in out


def test_compare_input_errors_are_one_line(tmp_path, cli):
    (tmp_path / "eval.json").write_text(json.dumps({"schema": "edgeai.eval/1", "results": []}))
    code, out, err = cli("bench", "--compare", str(tmp_path / "eval.json"), str(tmp_path / "missing.json"))
    assert code == 2 and "is not an edgeai.bench/1 report" in err
    with pytest.raises(InputSpecError, match="does not exist"):
        load_report(tmp_path / "missing.json")
    code, out, err = cli("bench", "model.onnx", "--compare", "a.json", "b.json")
    assert code == 2 and "no targets" in err
