"""optimize's report: pareto.png plots every candidate (rejected ones too) with the frontier and the choice,
report.html is one self-contained page that a real headless browser renders without console errors, and
recipe.yaml's paths are relative to OUTDIR."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgeai.optimize.plots import GREY, frontier, pareto_figure, pareto_png
from edgeai.optimize.report import relative_paths
from edgeai.optimize.report_html import report_html


def _cand(id_, status, p50, value, size, speedup=None, reason=""):
    return {"id": id_, "status": status, "p50_ms": p50, "p90_ms": p50 and p50 * 1.1, "value": value,
            "size_bytes": size, "speedup": speedup, "drop": None if value is None else 0.999 - value,
            "reason": reason or status, "metric": "cosine"}


REPORT = {
    "chosen": "onnx/prune0.5/int8-static", "why": "fastest within the budget <and> faster every round",
    "objective": "p50", "max_drop": 0.01, "rule": "chosen over FP32 only at >= 1.03x", "elapsed_s": 95.0,
    "budget_minutes": 2.0, "stopped": {"by": "budget", "why": "the budget", "after_s": 95.0},
    "notes": ["FP16 skipped: no FP16 arithmetic on this CPU"],
    "env": {"cpu": {"model": "Test CPU", "machine": "x86_64", "flags": ["avx2", "avx512_vnni"]}},
    "config": {"rounds": 3, "threads": 1},
    "formats": [{"format": "onnx", "fp32_speedup": 1.0, "best": "onnx/int8-static", "best_speedup": 1.9},
                {"format": "tflite", "fp32_speedup": 2.1, "best": "tflite/fp32", "best_speedup": 2.1}],
    "baseline": _cand("onnx/fp32", "ok", 1.0, 0.999, 4_000_000, 1.0),
    "candidates": [
        _cand("onnx/fp32", "ok", 1.0, 0.999, 4_000_000, 1.0),
        _cand("onnx/int8-static", "ok", 0.52, 0.995, 1_000_000, 1.92),
        _cand("tflite/fp32", "ok", 0.48, 0.999, 4_000_000, 2.08),
        _cand("onnx/prune0.5/int8-static", "chosen", 0.30, 0.992, 500_000, 3.3),
        _cand("onnx/prune0.75/int8-static", "rejected", 0.21, 0.95, 300_000, 4.7, "cosine drop 0.049 > 0.01"),
        _cand("onnx/prune0.75/fp32", "rejected", None, 0.93, 1_000_000, None, "rejected before timing"),
        _cand("onnx/fp16", "skipped", None, None, None),
    ],
}


def test_frontier_keeps_only_candidates_no_other_beats_on_both_axes():
    ok = [c for c in REPORT["candidates"] if c["status"] in ("ok", "chosen")]
    assert [c["id"] for c in frontier(ok)] == ["onnx/prune0.5/int8-static", "tflite/fp32"]


def test_pareto_png_is_a_real_plot():
    png = pareto_png(REPORT)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_pareto_plot_shows_every_candidate_the_frontier_the_choice_and_labels_that_do_not_overlap():
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex
    fig = pareto_figure(REPORT)
    try:
        ax = fig.axes[0]
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        marks = {}   # (x, y) -> (face colour, area) of the candidate markers (not the star or the square)
        for coll in ax.collections:
            if coll.get_label() in ("FP32 baseline",) or coll.get_label().startswith("chosen:"):
                continue
            for (x, y), face, size in zip(coll.get_offsets(), coll.get_facecolors(), coll.get_sizes()):
                marks[(round(float(x), 3), round(float(y), 3))] = (to_hex(face), float(size))
        scored = [c for c in REPORT["candidates"] if c["value"] is not None]
        assert len(marks) == len(scored) == 6                        # rejected ones too; the skipped one has no value
        assert marks[(0.21, 0.95)][0] == GREY                          # rejected: greyed
        untimed = next(k for k in marks if k[1] == 0.93)               # rejected before timing: the right column
        assert untimed[0] > 0.52 and marks[untimed][0] == GREY
        assert marks[(1.0, 0.999)][1] > marks[(0.21, 0.95)][1]       # 4 MB draws larger than 0.3 MB
        [front] = [ln for ln in ax.lines if ln.get_label() == "Pareto frontier"]
        assert list(front.get_xdata()) == [0.30, 0.48]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend == ["outside the budget (drop > 0.01)", "Pareto frontier", "within budget", "rejected / failed",
                          "chosen: onnx/prune0.5/int8-static", "FP32 baseline"]   # no entry for what is not drawn
        labels = [t for t in ax.texts if t.get_text() in {c["id"] for c in scored}]
        assert sorted(t.get_text() for t in labels) == sorted(c["id"] for c in scored)
        boxes = [t.get_window_extent(renderer) for t in labels]
        inside = ax.get_window_extent(renderer)
        assert all(b.x0 >= inside.x0 - 1 and b.x1 <= inside.x1 + 1 for b in boxes)
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    finally:
        plt.close(fig)


def test_report_html_is_self_contained_and_says_everything():
    html = report_html(REPORT, pareto_png(REPORT))
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert 'src="data:image/png;base64,' in html
    for text in ("Stopped early", "onnx/prune0.75/fp32", "rejected before timing", "Formats against the same baseline",
                 "&lt;and&gt;", "avx512_vnni", "FP16 skipped"):
        assert text in html, text


def test_recipe_paths_are_relative_to_outdir(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("eval.npz", "model.py"):
        (data / name).write_bytes(b"x")
    out = tmp_path / "runs" / "opt"
    out.mkdir(parents=True)
    recipe = {"model": f"{data / 'model.py'}:make", "data": {"eval": str(data / "eval.npz"), "train": None},
              "metric": "edgeai.zoo.pitch:pitch_error", "inputs": ["x:batch,3"]}
    rel = relative_paths(recipe, out)
    assert rel["model"] == "../../data/model.py:make" and rel["data"]["eval"] == "../../data/eval.npz"
    assert rel["metric"] == "edgeai.zoo.pitch:pitch_error" and rel["data"]["train"] is None
    from edgeai.recipe import recipe_from_dict
    loaded = recipe_from_dict({**rel, "data": {"eval": rel["data"]["eval"]}}, base_dir=out)
    assert Path(loaded.data.eval).resolve() == (data / "eval.npz").resolve()
    assert Path(loaded.model.rpartition(":")[0]).resolve() == (data / "model.py").resolve()


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_html_renders_in_headless_chromium_without_console_errors(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(report_html(REPORT, pareto_png(REPORT)), encoding="utf-8")
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--window-size=1200,1800",
         f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert shot.is_file() and shot.stat().st_size > 30_000, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line
               or "Failed to load resource" in line]
    assert console == [], console
