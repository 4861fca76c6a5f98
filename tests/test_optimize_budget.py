"""The optimize budget is a wall: the planner's arithmetic, successive halving, stops at the budget and on signals."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeai.optimize.cache import Cache
from edgeai.optimize.config import OptimizeConfig, installed_formats
from edgeai.optimize.planner import Costs, Screened, fit_minutes, grid_floor, plan_final, promising, screen_minutes
from edgeai.optimize.search import Built, Search
from edgeai.optimize.stop import Stopped
from test_optimize_search import FakeLab, by_id, config, search


# ---------------------------------------------------------------------- the planner, on made-up costs
def test_distillation_minutes_are_rounded_down_on_the_grid():
    assert [grid_floor(m) for m in (0.1, 0.25, 0.3, 0.99, 1.0, 7.9, 8.0, 20.0)] == [None, 0.25, 0.25, 0.5, 1, 4, 8, 16]


def test_a_unit_gets_only_the_distillation_that_fits_with_its_build_and_timing():
    costs = Costs(overhead_s=30.0, timing_s=10.0)
    # 600 s / 1.15 = 521.7 s, less 30 s of build and 3 x 10 s of timing: 7.7 min -> 4 min on the grid
    assert fit_minutes(600.0, costs, candidates=2) == 4
    assert costs.unit_s(4, 2) <= 600.0 < costs.unit_s(8, 2)
    assert fit_minutes(60.0, costs, candidates=2) is None      # not even the shortest distillation


def test_screens_share_30_percent_of_the_distillation_time_left():
    costs = Costs(overhead_s=20.0, timing_s=6.0)
    # 3 screens' builds and timings take 3 x 1.15 x (20 + 18) = 131 s; 30% of the 1659 s left, over 3
    # screens and the 1.15 slack: 2.4 min -> 2 min each
    assert screen_minutes(1800.0, 3, costs, candidates=2) == 2
    assert screen_minutes(300.0, 3, costs, candidates=2) == 0.25    # little time: the shortest screen
    assert screen_minutes(150.0, 3, costs, candidates=2) is None     # not even that


def test_promising_screens_are_unconverged_near_the_budget_fastest_first_else_the_closest():
    arms = [Screened("onnx", 0.5, 0.3, 3.0, converged=False), Screened("onnx", 0.85, 2.5, 13.0, converged=False),
            Screened("onnx", 0.7, 0.8, 4.0, converged=True),     # ended on its epochs: more time will not help
            Screened("onnx", 0.95, 9.0, 40.0, converged=False)]  # 9x the budget away
    assert [a.ratio for a in promising(arms, max_drop=1.0)] == [0.85, 0.5]
    # none within 3x a zero budget: the one closest to it is still worth a longer distillation
    assert [a.ratio for a in promising(arms, max_drop=0.0)] == [0.5]
    assert promising([Screened("onnx", 0.7, 0.8, 4.0, converged=True)], max_drop=0.0) == []


def test_final_rung_takes_two_arms_when_both_get_twice_the_screen_else_one_else_none():
    costs = Costs(overhead_s=20.0, timing_s=6.0)
    arms = [Screened("onnx", 0.85, 2.5, 13.0, False), Screened("onnx", 0.7, 0.8, 4.0, False)]
    plan, why = plan_final(arms, 1400.0, costs, candidates=2, screened_minutes=1)
    assert [(a.ratio, m) for a, m in plan] == [(0.85, 8), (0.7, 8)] and "onnx prune0.85 (8 min)" in why
    plan, _ = plan_final(arms, 250.0, costs, candidates=2, screened_minutes=1)   # 2 x 1.1 min, or 1 x 2 min
    assert [(a.ratio, m) for a, m in plan] == [(0.85, 2)]
    plan, why = plan_final(arms, 150.0, costs, candidates=2, screened_minutes=1)
    assert plan == [] and "no time left for a longer distillation" in why


def test_final_rung_gives_no_more_than_the_full_schedule_needs():
    costs = Costs(overhead_s=20.0, timing_s=6.0)
    quick = Screened("onnx", 0.5, 2.0, 3.0, False, seconds_per_epoch=5.0, epochs=30)   # 150 s in all
    plan, _ = plan_final([quick], 3000.0, costs, candidates=2, screened_minutes=1)
    assert plan[0][1] == 4      # 2.5 min, rounded up on the grid, not the 32 min that would fit


# ---------------------------------------------------------------------- the search on a fake lab
class DistillLab(FakeLab):
    """Pruned + distilled units take their max_minutes plus `overhead` s and report what distillation ran."""

    def __init__(self, *a, overhead=20.0, **kw):
        super().__init__(*a, **kw)
        self.overhead = overhead

    def build(self, units, dests, deadline=None, after_distill_s=0.0):
        out = super().build(units, dests, deadline, after_distill_s)
        for u in units:
            distill = next((s["distill"] for s in u.steps if "distill" in s), None)
            if distill is None:
                continue
            minutes = distill["max_minutes"]
            self.now += 60 * minutes + self.overhead - self.prune_build_s
            for c in u.candidates:
                if c.id in out and not out[c.id].error:
                    out[c.id].distill = {"epochs": 30, "epochs_run": 2, "seconds": 60 * minutes,
                                         "samples_trained": 2000, "train_samples": 1000, "out_of_time": True}
        return out


def test_successive_halving_screens_every_ratio_then_distills_the_most_promising_longer(tmp_path):
    metric = {"onnx/fp32": 98.0, "onnx/prune0.85+distill2m/fp32": 95.5, "onnx/prune0.85+distill2m/int8-static": 95.5,
              "onnx/prune0.7+distill2m/fp32": 97.2, "onnx/prune0.7+distill2m/int8-static": 97.2,
              "onnx/prune0.85+distill16m/fp32": 97.5, "onnx/prune0.85+distill16m/int8-static": 97.4}
    latency = {"onnx/fp32": 10.0, "onnx/int8-static": 5.0, "onnx/int8-dynamic": 11.0,
               "onnx/prune0.7+distill2m/fp32": 4.0, "onnx/prune0.7+distill2m/int8-static": 2.5,
               "onnx/prune0.5+distill2m/int8-static": 3.3,
               "onnx/prune0.85+distill16m/fp32": 2.2, "onnx/prune0.85+distill16m/int8-static": 1.1}
    lab = DistillLab(latency=latency, metric=metric, build_s=20.0)
    result = search(lab, tmp_path, prune_ratios=(0.5, 0.7, 0.85), train_data="t.npz")
    built = [(u.steps[0]["prune"]["ratio"], u.steps[1]["distill"]["max_minutes"]) for u in lab.built_units if u.steps]
    # screens: most expected speedup first; then the promising ones longer: 0.85 (within 3x the budget);
    # 0.7 was already accepted at 4x, the fastest so far: a longer distillation would not make it faster
    assert built == [(0.85, 2), (0.7, 2), (0.5, 2), (0.85, 16)]
    # the screens measured 60 s per epoch: the 16 min run asks for the epochs that fit (90% of 16 min)
    assert [u.steps[1]["distill"].get("epochs") for u in lab.built_units if u.steps] == [None, None, None, 14]
    assert result.chosen.id == "onnx/prune0.85+distill16m/int8-static"
    assert result.pruning["screen_minutes"] == 2
    assert [(f["ratio"], f["minutes"]) for f in result.pruning["final"]] == [(0.85, 16)]
    assert result.pruning["why"] == ("distilled longer: onnx prune0.85 (16 min); not distilled longer: onnx prune0.7, "
                                     "onnx prune0.5 (expected speedup no more than the accepted "
                                     "onnx/prune0.7+distill2m/int8-static's 4.00x)")
    assert any("successive halving" in n for n in result.notes)
    assert lab.now <= 30 * 60 and result.stopped is None


def test_an_accepted_screen_that_is_the_fastest_is_not_distilled_longer(tmp_path):
    metric = {"onnx/fp32": 98.0, "onnx/prune0.85+distill2m/fp32": 97.8, "onnx/prune0.85+distill2m/int8-static": 97.7,
              "onnx/prune0.7+distill2m/fp32": 97.2, "onnx/prune0.7+distill2m/int8-static": 97.2}
    latency = {"onnx/fp32": 10.0, "onnx/int8-static": 5.0, "onnx/int8-dynamic": 11.0,
               "onnx/prune0.85+distill2m/fp32": 2.0, "onnx/prune0.85+distill2m/int8-static": 1.0,
               "onnx/prune0.7+distill2m/fp32": 4.0, "onnx/prune0.7+distill2m/int8-static": 2.5,
               "onnx/prune0.5+distill2m/int8-static": 3.3}
    lab = DistillLab(latency=latency, metric=metric, build_s=20.0)
    result = search(lab, tmp_path, prune_ratios=(0.5, 0.7, 0.85), train_data="t.npz")
    assert [u.steps[1]["distill"]["max_minutes"] for u in lab.built_units if u.steps] == [2, 2, 2]
    assert result.chosen.id == "onnx/prune0.85+distill2m/int8-static" and result.pruning["final"] == []
    assert result.pruning["why"].startswith("no screened ratio is worth a longer distillation; not distilled longer")
    assert lab.now < 15 * 60          # the budget left is not spent on builds that cannot win


def test_a_budget_too_small_for_any_screen_stops_early_with_the_best_so_far(tmp_path):
    lab = DistillLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0}, metric={}, build_s=20.0)
    result = search(lab, tmp_path, prune_ratios=(0.5, 0.75), train_data="t.npz", budget_minutes=1.5)
    rows = by_id(result)
    assert not [u for u in lab.built_units if u.steps]
    assert result.stopped == "budget" and result.chosen.id == "onnx/int8-static"
    assert "no time for even a 0.25 min screen" in rows["onnx/prune0.5+distill/fp32"].reason
    assert any("stopped early at the budget of 1.5 min" in n for n in result.notes)
    assert lab.now <= 90


def test_no_build_starts_that_its_measured_cost_says_cannot_finish(tmp_path):
    lab = FakeLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0, "onnx/prune0.25/fp32": 7.0,
                           "onnx/prune0.25/int8-static": 4.0}, metric={}, build_s=20.0, prune_build_s=60.0)
    # at 116 s, 34 s are left of 150 s: the last pruned build took 78 s with its timing, so 0.5 is not started
    result = search(lab, tmp_path, prune_ratios=(0.25, 0.5), budget_minutes=2.5)
    rows = by_id(result)
    assert rows["onnx/prune0.5/fp32"].status == "skipped"
    assert rows["onnx/prune0.5/fp32"].reason.startswith("would not finish within the budget: estimated 1.")
    assert result.chosen.id == "onnx/prune0.25/int8-static" and lab.now < 150 and result.stopped == "budget"


def test_a_build_killed_at_the_budget_is_not_cached_and_the_search_reports(tmp_path):
    class KilledLab(FakeLab):
        def build(self, units, dests, deadline=None, after_distill_s=0.0):
            if units[0].steps:     # the pruned build runs past its deadline: the lab kills it
                assert deadline is not None and deadline <= 30 * 60
                self.now = deadline
                return {cid: Built(cid, error="stopped at the budget while it was being built", interrupted=True)
                        for cid in dests}
            return super().build(units, dests, deadline, after_distill_s)

    lab = KilledLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0}, metric={})
    result = search(lab, tmp_path, prune_ratios=(0.5,))
    rows = by_id(result)
    assert rows["onnx/prune0.5/fp32"].status == "skipped" and "stopped at the budget" in rows["onnx/prune0.5/fp32"].reason
    assert result.stopped == "budget" and result.chosen.id == "onnx/int8-static"
    cache = Cache(tmp_path / "cache")
    s = Search(config(prune_ratios=(0.5,)), FakeLab(latency={}, metric={}), cache)
    assert cache.get_built(s.key(rows["onnx/prune0.5/fp32"].candidate)) is None
    assert not cache.candidate_dir(s.key(rows["onnx/prune0.5/fp32"].candidate)).exists()


def test_a_signal_during_a_build_times_what_was_built_and_says_why(tmp_path):
    class SignalLab(FakeLab):
        def build(self, units, dests, deadline=None, after_distill_s=0.0):
            if units[0].steps:
                raise Stopped("SIGTERM")
            return super().build(units, dests, deadline, after_distill_s)

    lab = SignalLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0}, metric={})
    result = search(lab, tmp_path, prune_ratios=(0.5,))
    assert result.stopped == "SIGTERM" and result.chosen.id == "onnx/int8-static" and result.baseline.timing
    assert by_id(result)["onnx/prune0.5/fp32"].status == "pending"
    assert any("stopped early by SIGTERM" in n for n in result.notes)
    # only the base unit's three candidates are in the cache; the pruned build left no folder
    assert len(list((tmp_path / "cache" / "candidates").glob("*/result.json"))) == 3
    assert len(list((tmp_path / "cache" / "candidates").iterdir())) == 3


def test_pruning_runs_in_every_format_within_1_5x_of_the_fastest(tmp_path):
    near = FakeLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0, "tflite/fp32": 7.0}, metric={})
    search(near, tmp_path / "a", formats=("onnx", "tflite"), prune_ratios=(0.5,))
    assert sorted(u.format for u in near.built_units if u.steps) == ["onnx", "tflite"]
    far = FakeLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0, "tflite/fp32": 8.5}, metric={})
    result = search(far, tmp_path / "b", formats=("onnx", "tflite"), prune_ratios=(0.5,))
    assert [u.format for u in far.built_units if u.steps] == ["onnx"]
    assert any("tflite was more than 1.5x slower" in n for n in result.notes)
    table = {f["format"]: f for f in result.formats}
    assert table["tflite"]["fp32_speedup"] == pytest.approx(10 / 8.5) and table["onnx"]["best_unpruned_speedup"] == 2


def test_default_formats_are_the_installed_ones():
    import importlib.util
    tflite = all(importlib.util.find_spec(m) for m in ("litert_torch", "ai_edge_litert"))
    assert installed_formats() == (("onnx", "tflite") if tflite else ("onnx",))
    assert OptimizeConfig(model="m.py:f").formats == installed_formats()
    assert OptimizeConfig(model="m.onnx").formats == ("onnx",)
    assert OptimizeConfig(model="m.py:f", formats=("tflite",)).formats == ("tflite",)


# ---------------------------------------------------------------------- the real command
def _write_model(folder: Path) -> list[str]:
    """A CNN with enough MACs that a distillation of many epochs lasts minutes; its data files."""
    (folder / "net.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def make():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv1d(1, 64, 9, padding=4), nn.ReLU(), nn.Conv1d(64, 64, 9, padding=4),\n"
        "                         nn.ReLU(), nn.AdaptiveAvgPool1d(8), nn.Flatten(), nn.Linear(512, 16)).eval()\n")
    rng = np.random.default_rng(0)
    for name, n in (("train", 2048), ("eval", 64), ("calib", 32)):
        np.savez(folder / f"{name}.npz", **{"input": rng.normal(size=(n, 1, 256)).astype(np.float32)})
    return [str(folder / "net.py") + ":make", "--input", "input:batch,1,256", "--eval-data", str(folder / "eval.npz"),
            "--calibration", str(folder / "calib.npz"), "--train-data", str(folder / "train.npz"),
            "--max-drop", "0.02", "--formats", "onnx", "--rounds", "2", "--min-seconds", "0.2",
            "--distill-epochs", "1000", "-q"]


def _optimize(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.Popen([sys.executable, "-c", "import sys; from edgeai.cli import main; sys.exit(main())",
                             "optimize", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_optimize_budget_too_small_for_a_distillation_holds_the_wall_and_reports(tmp_path):
    budget = 1.5
    t0 = time.monotonic()
    proc = _optimize([*_write_model(tmp_path), "--budget-minutes", str(budget), "-o", str(tmp_path / "out")], tmp_path)
    out, err = proc.communicate(timeout=600)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, err
    assert wall <= budget * 60 + 60, wall          # within one minute (5% of 1.5 min is less)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["stopped"]["by"] == "budget" and report["elapsed_s"] <= budget * 60 + 60
    assert "Stopped early" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "best" / "manifest.json").is_file() and (tmp_path / "out" / "pareto.png").is_file()
    assert not list((tmp_path / "out" / ".cache" / "work").glob("unit-*"))


@pytest.mark.slow
def test_sigterm_during_a_build_writes_the_report_and_exits_143(tmp_path):
    import psutil

    proc = _optimize([*_write_model(tmp_path), "--budget-minutes", "20", "-o", str(tmp_path / "out")], tmp_path)
    work, timings = tmp_path / "out" / ".cache" / "work", tmp_path / "out" / ".cache" / "timings"
    deadline = time.monotonic() + 300
    while (time.monotonic() < deadline and proc.poll() is None
           and not (timings.is_dir() and list(work.glob("unit-*")))):
        time.sleep(0.5)   # the base unit is timed, and a pruned build is in flight
    assert proc.poll() is None, proc.communicate()[1]
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["stopped"]["by"] == "SIGTERM" and report["baseline"]["p50_ms"] is not None
    assert (tmp_path / "out" / "best" / "manifest.json").is_file()
    assert not list(work.glob("unit-*"))                                  # no staging left behind
    time.sleep(1)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_a_distillation_in_flight_is_cut_to_end_before_the_deadline():
    from edgeai.optimize.builder import cap_distillation

    recipe = {"model": "m.py:f", "steps": [{"prune": {"ratio": 0.5}}, {"distill": {"epochs": 30, "max_minutes": 8}}]}
    # 5 min to the deadline, 60 s of export and scoring after the distillation: 4 min for it
    capped, cap = cap_distillation(recipe, deadline=1000.0 + 300, after_s=60.0, now=1000.0)
    assert cap == 4 and capped["steps"][1] == {"distill": {"epochs": 30, "max_minutes": 4}}
    assert capped["steps"][0] == {"prune": {"ratio": 0.5}} and recipe["steps"][1]["distill"]["max_minutes"] == 8
    roomy, cap = cap_distillation(recipe, deadline=1000.0 + 3600, after_s=60.0, now=1000.0)
    assert cap is None and roomy["steps"] == recipe["steps"]      # 8 min fit: left as planned
    assert cap_distillation(recipe, None, 60.0, 1000.0) == (recipe, None)
    # the export's wall: its accuracy fallback search stops at the same time left
    assert capped["max_minutes"] == 4 and roomy["max_minutes"] == 59
    assert cap_distillation({**recipe, "max_minutes": 2}, 1000.0 + 300, 60.0, 1000.0)[0]["max_minutes"] == 2


def test_a_build_past_its_deadline_is_killed_and_leaves_no_staging(tmp_path):
    import psutil

    from edgeai.optimize.candidates import Unit
    from edgeai.optimize.lab import PipelineLab

    args = _write_model(tmp_path)
    cfg = OptimizeConfig(model=args[0], inputs=("input:batch,1,256",), eval_data=str(tmp_path / "eval.npz"),
                         max_drop=0.02, formats=("onnx",))
    lab = PipelineLab(cfg, tmp_path / "work")
    try:
        dest = tmp_path / "cand"
        dest.mkdir()
        # a spawned worker needs seconds to import torch: a 1 s deadline passes while it builds
        out = lab.build([Unit("onnx", (), ())], {"onnx/fp32": dest}, deadline=lab.clock() + 1.0)
        assert out["onnx/fp32"].interrupted and "stopped at the budget" in out["onnx/fp32"].error
        assert lab._pool is None and not list((tmp_path / "work").glob("unit-*"))
        time.sleep(1)
        alive = [c.cmdline() for c in psutil.Process().children(recursive=True)   # multiprocessing's own
                 if c.is_running() and c.status() != psutil.STATUS_ZOMBIE           # resource tracker stays
                 and "resource_tracker" not in " ".join(c.cmdline())]
        assert not alive, alive
    finally:
        lab.close()


def test_the_first_format_is_timed_before_another_format_is_built(tmp_path):
    class OrderLab(FakeLab):
        events: list = []

        def build(self, units, dests, deadline=None, after_distill_s=0.0):
            self.events += [f"build {u.format}" for u in units]
            return super().build(units, dests, deadline, after_distill_s)

        def time(self, folders):
            self.events.append("time " + ",".join(sorted({cid.split("/")[0] for cid in folders})))
            return super().time(folders)

    lab = OrderLab(latency={"onnx/int8-static": 5.0}, metric={})
    lab.events = []
    search(lab, tmp_path, formats=("onnx", "tflite"))
    # a slow second format (TFLite's quantizer) must not leave the search without a timed best so far
    assert lab.events[:3] == ["build onnx", "time onnx", "build tflite"]


def test_when_not_every_screen_fits_the_most_promising_ones_are_screened(tmp_path):
    lab = DistillLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0, "onnx/int8-dynamic": 11.0}, metric={},
                     build_s=20.0)
    # 150 s are left after the base unit: two 0.25 min screens (with their builds and timing) fit, not three
    result = search(lab, tmp_path, prune_ratios=(0.5, 0.7, 0.85), train_data="t.npz", budget_minutes=188 / 60)
    rows = by_id(result)
    assert [u.steps[0]["prune"]["ratio"] for u in lab.built_units if u.steps] == [0.85, 0.7]
    assert rows["onnx/prune0.5+distill0.25m/fp32"].reason == "not screened: 2 screen(s) of 0.25 min fit in the budget"
    assert result.pruning["screen_minutes"] == 0.25 and lab.now <= 188 and result.stopped == "budget"


def test_a_screen_that_fails_at_once_gives_its_turn_to_the_next_ratio(tmp_path):
    failed = {"onnx/prune0.85+distill0.25m/fp32", "onnx/prune0.85+distill0.25m/int8-static"}
    lab = DistillLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0, "onnx/int8-dynamic": 11.0}, metric={},
                     build_s=20.0, fail=failed)
    result = search(lab, tmp_path, prune_ratios=(0.5, 0.7, 0.85), train_data="t.npz", budget_minutes=3.5)
    assert [u.steps[0]["prune"]["ratio"] for u in lab.built_units if u.steps][:3] == [0.85, 0.7, 0.5]
    assert by_id(result)["onnx/prune0.85+distill0.25m/fp32"].status == "failed"
    assert [s["ratio"] for s in result.pruning["screened"]] == [0.7, 0.5] and lab.now <= 210


def test_screens_run_in_the_format_whose_builds_are_cheapest(tmp_path):
    class SlowTfliteLab(DistillLab):
        def build(self, units, dests, deadline=None, after_distill_s=0.0):
            out = super().build(units, dests, deadline, after_distill_s)
            self.now += sum(100.0 for u in units if u.format == "tflite")   # its quantizer is slow
            return out

    # pruned ONNX runs 2x faster than unpruned wherever it is screened (4x with INT8): 5x expected in TFLite
    latency = {"onnx/fp32": 10.0, "onnx/int8-static": 5.0, "tflite/fp32": 4.0,
               **{f"onnx/prune{r}+distill{m}m/{q}": t for r in (0.5, 0.7) for m in (0.25, 0.5, 1, 2, 4)
                  for q, t in (("fp32", 5.0), ("int8-static", 2.5))}}
    lab = SlowTfliteLab(latency=latency, metric={}, build_s=20.0)
    result = search(lab, tmp_path, formats=("onnx", "tflite"), prune_ratios=(0.5, 0.7), train_data="t.npz")
    screens = [u for u in lab.built_units if u.steps and u.steps[1]["distill"]["max_minutes"]
               == result.pruning["screen_minutes"]]
    assert result.pruning["screen_format"] == "onnx" and {u.format for u in screens} == {"onnx"}
    # the longer distillations go where the speedup is expected: TFLite ran FP32 2.5x faster unpruned
    assert result.pruning["final"] and result.pruning["final"][0]["format"] == "tflite"


def test_a_screen_is_charged_what_the_last_screen_measured_not_the_unpruned_build(tmp_path):
    lab = DistillLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0, "onnx/int8-dynamic": 11.0}, metric={},
                     build_s=20.0, overhead=300.0)
    # planned on the unpruned build (20 s): two 1 min screens; the first one took 300 s besides its
    # distillation, so with 222 s left the second would not finish and is not started
    result = search(lab, tmp_path, prune_ratios=(0.5, 0.7), train_data="t.npz", budget_minutes=638 / 60)
    assert [u.steps[0]["prune"]["ratio"] for u in lab.built_units if u.steps] == [0.7]
    assert by_id(result)["onnx/prune0.5+distill1m/fp32"].reason.startswith("would not finish within the budget")
    assert lab.now <= 638


TEACHER_MODEL = """import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 64), nn.Linear(64, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def make():
    torch.manual_seed(0)
    return MLP().eval()
"""


def test_pruned_candidates_share_one_teacher_pass_through_the_optimize_cache(tmp_path):
    """A build's distillation writes the teacher's outputs under the optimize cache; the next pruned candidate
    (another ratio, same teacher and data) reads them instead of running the teacher again."""
    from edgeai.manifest import Manifest
    from edgeai.optimize.builder import build_unit
    (tmp_path / "model.py").write_text(TEACHER_MODEL)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.normal(size=(64, 6)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.normal(size=(16, 6)).astype(np.float32))
    teacher = Cache(tmp_path / "cache").teacher_dir()
    notes = []
    for ratio in (0.25, 0.5):
        dest = tmp_path / f"dest-{ratio}"
        dest.mkdir()
        recipe = {"model": f"{tmp_path}/model.py:make", "inputs": ["x:batch,6"], "format": "onnx",
                  "steps": [{"prune": {"ratio": ratio}}, {"distill": {"epochs": 1}}],
                  "data": {"train": str(tmp_path / "train.npz"), "eval": str(tmp_path / "eval.npz")}}
        out = build_unit({"recipe": recipe, "ids": {"fp32": "c"}, "dests": {"c": str(dest)},
                          "work": str(tmp_path / f"unit-{ratio}"), "deadline": None, "after_distill_s": 0.0,
                          "teacher_cache": str(teacher), "reference": False})
        assert "error" not in out["c"], out
        step = next(s for s in Manifest.read(dest).get().steps if s["type"] == "model.distill")
        notes.append(" ".join(step["notes"]))
    assert "64 sample(s) at" in notes[0] and "64 sample(s) read from the cache" in notes[1]
    assert [p.suffix for p in teacher.iterdir()] == [".npy"]
