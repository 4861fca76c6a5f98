"""The optimize search on a deterministic Lab: order, never-slower rule, ties, budget, cache, report files."""
import json
from pathlib import Path

import numpy as np
import pytest

from edgeai.errors import ExportError
from edgeai.fsutil import sha256_file
from edgeai.manifest import ArtifactEntry, Manifest
from edgeai.optimize.cache import Cache
from edgeai.optimize.candidates import Unit
from edgeai.optimize.config import OptimizeConfig
from edgeai.optimize.report import SCHEMA, write_all
from edgeai.optimize.search import Built, Search

X86 = {"model": "test cpu", "machine": "x86_64", "flags": ["avx2", "avx512_vnni"]}
ARM_FP16 = {"model": "test arm", "machine": "aarch64", "flags": ["asimd", "asimdhp"]}


class FakeLab:
    """Deterministic builds and timings from tables keyed by candidate id; a fake clock that each
    build and timing advances. Folders it builds are real (manifest + a model file)."""

    def __init__(self, latency, metric, size=None, fail=(), build_s=10.0, prune_build_s=60.0, rss=None, cpu=X86):
        self.latency, self.metric, self.size = latency, metric, size or {}
        self.fail, self.build_s, self.prune_build_s, self.rss, self._cpu = set(fail), build_s, prune_build_s, rss or {}, cpu
        self.now = 0.0
        self.built_units: list[Unit] = []
        self.timed: list[list[str]] = []

    def identity(self):
        return {"model": "fake-digest", "versions": {"edgeai": "test"}}

    def cpu(self):
        return self._cpu

    def clock(self):
        return self.now

    def build(self, units, dests, deadline=None, after_distill_s=0.0):
        out = {}
        for u in units:
            self.built_units.append(u)
            self.now += self.prune_build_s if u.steps else self.build_s
            for c in u.candidates:
                if c.id not in dests:   # built with its unit, kept from the cache
                    continue
                if c.id in self.fail:
                    out[c.id] = Built(c.id, error="quantizer broke")
                    continue
                folder = Path(dests[c.id])
                size = self.size.get(c.id, 1_000_000)
                (folder / "model.onnx").write_bytes(b"x" * 16)
                sha = sha256_file(folder / "model.onnx")
                entry = ArtifactEntry(c.scheme, "model.onnx", c.format, c.precision, sha, size, [], [])
                Manifest(source={"inputs": []}, artifacts=[entry], versions={}, created="now").write(folder)
                out[c.id] = Built(c.id, str(folder), size, "top1", self.metric.get(c.id, 98.0),
                                  reference_sha256="ab" * 32 if c.scheme == "fp32" and not c.steps else None)
        return out

    def time(self, folders):
        self.timed.append(list(folders))
        out = {}
        for cid in folders:
            lat = self.latency.get(cid, 10.0)
            rounds = lat if isinstance(lat, list) else [lat] * 3
            self.now += 3 * 2.0
            out[cid] = {"p50": list(rounds), "p90": [x * 1.2 for x in rounds],
                        "peak_rss_bytes": self.rss.get(cid, 100_000_000), "error": None}
        return out


def config(**kw):
    base = dict(model="m.py:f", inputs=("x:batch,4",), eval_data="e.npz", max_drop=1.0, calibration="c.npz",
                prune_ratios=(), budget_minutes=30.0, formats=("onnx",))
    base.update(kw)
    return OptimizeConfig(**base)


def search(lab, tmp_path, cache_read=True, **kw):
    return Search(config(**kw), lab, Cache(tmp_path / "cache", read=cache_read)).run()


def by_id(result):
    return {r.id: r for r in result.rows}


def test_chooses_the_fastest_candidate_within_the_budget(tmp_path):
    lab = FakeLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0, "onnx/int8-dynamic": 8.0},
                  metric={"onnx/fp32": 98.0, "onnx/int8-static": 97.5, "onnx/int8-dynamic": 98.0})
    result = search(lab, tmp_path)
    rows = by_id(result)
    assert result.chosen.id == "onnx/int8-static"
    assert rows["onnx/int8-static"].speedup == pytest.approx(2.0)
    assert rows["onnx/int8-static"].drop == pytest.approx(0.5)
    assert rows["onnx/int8-dynamic"].status == "ok" and rows["onnx/int8-dynamic"].speedup == pytest.approx(1.25)
    assert rows["onnx/fp32"].status == "ok"
    # cheap likely winners first: int8-static is the first variant built after FP32
    assert lab.built_units[0].schemes[0] == "int8-static"
    # every timing batch carries the baseline: speedups are ratios within the same rounds
    assert all("onnx/fp32" in batch for batch in lab.timed)


def test_candidate_over_the_accuracy_budget_is_rejected_even_if_fastest(tmp_path):
    lab = FakeLab(latency={"onnx/int8-static": 3.0, "onnx/int8-dynamic": 7.0},
                  metric={"onnx/fp32": 98.0, "onnx/int8-static": 96.5, "onnx/int8-dynamic": 97.9})
    result = search(lab, tmp_path)
    rows = by_id(result)
    assert rows["onnx/int8-static"].status == "rejected"
    assert "drop 1.5 > --max-drop 1" in rows["onnx/int8-static"].reason
    assert rows["onnx/int8-static"].timing is None  # a rejected candidate is not timed
    assert result.chosen.id == "onnx/int8-dynamic"


def test_never_slower_keeps_fp32_when_a_candidate_loses_one_round(tmp_path):
    lab = FakeLab(latency={"onnx/fp32": [10.0, 10.0, 10.0], "onnx/int8-static": [5.0, 5.0, 10.5],
                           "onnx/int8-dynamic": [9.8, 9.8, 9.8]},
                  metric={})
    result = search(lab, tmp_path)
    rows = by_id(result)
    assert result.chosen.id == "onnx/fp32"
    assert rows["onnx/fp32"].status == "chosen"
    assert rows["onnx/int8-static"].speedup == pytest.approx(2.0)
    assert "not faster in round 3 of 3" in rows["onnx/int8-static"].reason
    assert "median speedup 1.020x < 1.03x" in rows["onnx/int8-dynamic"].reason
    assert "no candidate passed" in result.why


def test_speedup_just_above_the_threshold_in_every_round_wins(tmp_path):
    lab = FakeLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 10.0 / 1.031, "onnx/int8-dynamic": 10.0}, metric={})
    assert search(lab, tmp_path).chosen.id == "onnx/int8-static"


def test_ties_go_to_the_smaller_file(tmp_path):
    lab = FakeLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0, "onnx/int8-dynamic": 5.02},
                  metric={}, size={"onnx/fp32": 1_000_000, "onnx/int8-static": 400_000, "onnx/int8-dynamic": 260_000})
    result = search(lab, tmp_path)
    assert result.chosen.id == "onnx/int8-dynamic"
    assert "tied within 1% with onnx/int8-static, chosen as the smaller file" in result.why


def test_fp16_is_skipped_where_the_cpu_cannot_run_it_faster_and_kept_for_size(tmp_path):
    lab = FakeLab(latency={"onnx/fp16": 10.1}, metric={})
    rows = by_id(search(lab, tmp_path / "a"))
    assert rows["onnx/fp16"].status == "skipped" and "never faster" in rows["onnx/fp16"].reason
    size = search(FakeLab(latency={"onnx/fp16": 10.1}, metric={}, size={"onnx/fp16": 500_000}),
                  tmp_path / "b", objective="size")
    assert size.chosen.id == "onnx/fp16"   # half the file at 0.99x speed: within the not-slower margin
    arm = by_id(search(FakeLab(latency={}, metric={}, cpu=ARM_FP16), tmp_path / "c"))
    assert arm["onnx/fp16"].status != "skipped"


def test_size_objective_picks_the_smallest_file_not_slower_than_fp32(tmp_path):
    lab = FakeLab(latency={"onnx/fp32": 10.0, "onnx/fp16": 10.2, "onnx/int8-dynamic": 11.0, "onnx/int8-static": 6.0},
                  metric={}, size={"onnx/fp32": 1_000_000, "onnx/fp16": 500_000, "onnx/int8-dynamic": 250_000,
                                   "onnx/int8-static": 300_000})
    result = search(lab, tmp_path, objective="size")
    rows = by_id(result)
    assert "slower than FP32 (median 0.909x < 0.97x)" in rows["onnx/int8-dynamic"].reason
    assert result.chosen.id == "onnx/int8-static"


def test_pruning_branch_stops_at_the_first_ratio_over_budget(tmp_path):
    lab = FakeLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0, "onnx/int8-dynamic": 11.0,
                           "onnx/prune0.25/fp32": 6.0, "onnx/prune0.25/int8-static": 3.0},
                  metric={"onnx/fp32": 98.0, "onnx/prune0.25/fp32": 95.0, "onnx/prune0.25/int8-static": 94.0})
    result = search(lab, tmp_path, prune_ratios=(0.5, 0.25))
    rows = by_id(result)
    pruned = [u for u in lab.built_units if u.steps]
    # without training data: ascending ratios, and the first that loses too much ends the branch
    assert len(pruned) == 1 and pruned[0].steps == ({"prune": {"ratio": 0.25, "up_to_limit": True}},)
    # pruned units are quantized only with the schemes that beat FP32 unpruned
    assert pruned[0].schemes == ("int8-static",)
    assert rows["onnx/prune0.25/fp32"].status == "rejected"
    assert rows["onnx/prune0.5/fp32"].status == "skipped"
    assert "prune0.25/fp32) already failed" in rows["onnx/prune0.5/int8-static"].reason
    assert result.chosen.id == "onnx/int8-static"


def test_prune_then_quantize_wins_when_it_keeps_accuracy(tmp_path):
    lab = FakeLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0, "onnx/prune0.25/fp32": 6.0,
                           "onnx/prune0.25/int8-static": 3.0, "onnx/prune0.5/fp32": 3.5,
                           "onnx/prune0.5/int8-static": 2.0},
                  metric={"onnx/fp32": 98.0, "onnx/prune0.5/int8-static": 97.2})
    result = search(lab, tmp_path, prune_ratios=(0.5, 0.25))
    assert [u.steps[0]["prune"]["ratio"] for u in lab.built_units if u.steps] == [0.25, 0.5]
    assert result.chosen.id == "onnx/prune0.5/int8-static"
    assert result.chosen.speedup == pytest.approx(5.0)


def test_cache_reuses_builds_and_timings_across_runs_and_objectives(tmp_path):
    table = dict(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0}, metric={},
                 size={"onnx/fp32": 1_000_000, "onnx/int8-static": 300_000, "onnx/int8-dynamic": 250_000})
    first = FakeLab(**table)
    assert search(first, tmp_path).chosen.id == "onnx/int8-static"
    assert len(first.built_units) == 1 and len(first.timed) == 1
    again = FakeLab(**table)
    assert search(again, tmp_path).chosen.id == "onnx/int8-static"
    assert again.built_units == [] and again.timed == []
    other = FakeLab(**table)   # a second objective re-uses exports and measurements; only FP16 is new
    assert search(other, tmp_path, objective="size").chosen.id == "onnx/int8-dynamic"
    assert other.built_units == [Unit("onnx", (), ("fp16",))] and other.timed == [["onnx/fp16", "onnx/fp32"]]
    forced = FakeLab(**table)
    search(forced, tmp_path, cache_read=False)
    assert len(forced.built_units) == 1 and len(forced.timed) == 1


def test_cache_builds_only_the_variants_it_lacks(tmp_path):
    lab = FakeLab(latency={}, metric={})
    search(lab, tmp_path, calibration=None)
    assert lab.built_units[0].schemes == ("int8-dynamic",)
    more = FakeLab(latency={}, metric={})
    result = search(more, tmp_path)     # calibration given now: only int8-static is new
    assert [u.schemes for u in more.built_units] == [("int8-static",)]
    assert by_id(result)["onnx/int8-static"].built.folder != by_id(result)["onnx/fp32"].built.folder


def test_size_and_rss_limits_reject_candidates(tmp_path):
    lab = FakeLab(latency={"onnx/int8-static": 5.0, "onnx/int8-dynamic": 6.0}, metric={},
                  size={"onnx/int8-static": 3_000_000, "onnx/int8-dynamic": 500_000},
                  rss={"onnx/int8-dynamic": 900_000_000})
    rows = by_id(search(lab, tmp_path, max_size_mb=2.0, max_rss_mb=500.0))
    assert rows["onnx/int8-static"].status == "rejected" and "3.000 MB > --max-size-mb 2" in rows["onnx/int8-static"].reason
    assert rows["onnx/int8-dynamic"].status == "rejected" and "peak RSS 900.0 MB" in rows["onnx/int8-dynamic"].reason
    assert rows["onnx/fp32"].status == "chosen"


def test_failed_variant_is_reported_and_the_search_goes_on(tmp_path):
    lab = FakeLab(latency={"onnx/int8-dynamic": 5.0}, metric={}, fail={"onnx/int8-static"})
    result = search(lab, tmp_path)
    assert by_id(result)["onnx/int8-static"].status == "failed"
    assert result.chosen.id == "onnx/int8-dynamic"


def test_a_baseline_that_cannot_be_built_is_an_error(tmp_path):
    with pytest.raises(ExportError, match="FP32 baseline could not be built: quantizer broke"):
        search(FakeLab(latency={}, metric={}, fail={"onnx/fp32"}), tmp_path)


def test_second_format_is_searched_and_pruning_follows_the_fastest_format(tmp_path):
    lab = FakeLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 8.0, "tflite/fp32": 6.0, "tflite/int8-static": 4.0,
                           "tflite/prune0.5/fp32": 3.0, "tflite/prune0.5/int8-static": 2.0},
                  metric={})
    result = search(lab, tmp_path, formats=("onnx", "tflite"), prune_ratios=(0.5,))
    assert [u.format for u in lab.built_units if u.steps] == ["tflite"]
    assert result.chosen.id == "tflite/prune0.5/int8-static"
    assert any("pruning tried in tflite only" in n for n in result.notes)


def test_report_files_schema_png_recipe_and_best_folder(tmp_path):
    import matplotlib.image

    from edgeai.recipe import load_recipe

    lab = FakeLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0, "onnx/int8-dynamic": 12.0},
                  metric={"onnx/fp32": 98.0, "onnx/int8-static": 97.0, "onnx/int8-dynamic": 98.0},
                  size={"onnx/int8-static": 350_000})
    result = search(lab, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    recipe = {"model": "m.py:f", "inputs": ["x:batch,4"], "format": "onnx", "export": {}, "steps": [],
              "quantize": ["int8-static"], "data": {"eval": "e.npz", "calibration": "c.npz", "train": None},
              "max_drop": 1.0}
    report = write_all(out, result, {"objective": "p50", "max_drop": 1.0, "budget_minutes": 30.0, "rounds": 3,
                                     "threads": 1}, {"cpu": X86}, recipe)
    data = json.loads((out / "report.json").read_text())
    assert data == json.loads(json.dumps(report))
    assert data["schema"] == SCHEMA and data["chosen"] == "onnx/int8-static"
    assert data["baseline"]["id"] == "onnx/fp32" and data["baseline"]["p50_ms"] == pytest.approx(10.0)
    keys = {"id", "steps", "format", "precision", "size_bytes", "p50_ms", "p90_ms", "metric", "value", "drop",
            "status", "reason"}
    for c in data["candidates"]:
        assert keys <= set(c)
        assert c["status"] in ("chosen", "ok", "rejected", "failed", "skipped")
    chosen = next(c for c in data["candidates"] if c["status"] == "chosen")
    assert chosen["steps"] == [{"quantize": "int8-static"}] and chosen["size_bytes"] == 350_000
    assert chosen["p90_ms"] == pytest.approx(6.0) and chosen["drop"] == pytest.approx(1.0)
    assert chosen["rounds"]["baseline_p50_ms"] == [10.0, 10.0, 10.0]
    png = matplotlib.image.imread(out / "pareto.png")
    assert png.ndim == 3 and png.shape[0] > 200 and png.shape[1] > 300
    assert np.unique(png.reshape(-1, png.shape[2]), axis=0).shape[0] > 10   # something was drawn
    rec = load_recipe(out / "recipe.yaml")
    assert rec.quantize == ({"int8-static": {}},) and rec.model == "m.py:f" and rec.max_drop == 1.0
    best = Manifest.read(out / "best")
    assert [a.name for a in best.artifacts] == ["int8-static"]
    assert sorted(p.name for p in (out / "best").iterdir()) == ["manifest.json", "model.onnx"]
    assert best.source["optimize"]["reference"]["outputs_sha256"] == "ab" * 32
    assert best.artifacts[0].metrics["speedup_vs_fp32"] == pytest.approx(2.0)
    md = (out / "report.md").read_text()
    assert "| onnx/int8-static | chosen | 0.350 | 5.000 |" in md


def test_p90_objective_judges_the_tail_not_the_median(tmp_path):
    class TailLab(FakeLab):
        def time(self, folders):
            out = super().time(folders)
            if "onnx/int8-static" in out:   # a faster median with a worse tail
                out["onnx/int8-static"]["p90"] = [13.0, 13.0, 13.0]
            return out

    table = dict(latency={"onnx/fp32": 10.0, "onnx/int8-static": 6.0, "onnx/int8-dynamic": 9.0}, metric={})
    assert search(TailLab(**table), tmp_path / "a").chosen.id == "onnx/int8-static"
    p90 = search(TailLab(**table), tmp_path / "b", objective="p90")
    assert p90.chosen.id == "onnx/int8-dynamic"
    assert by_id(p90)["onnx/int8-static"].speedup == pytest.approx(12.0 / 13.0)


def test_cli_accepts_format_as_a_synonym_of_formats():
    from edgeai.cli import build_parser
    args = build_parser().parse_args(["optimize", "m.py:f", "--input", "x:batch,4", "--eval-data", "e.npz",
                                      "--max-drop", "1", "-o", "out", "--format", "tflite,onnx"])
    assert args.formats == ("tflite", "onnx") and args.objective == "p50" and args.budget_minutes == 30.0


def test_pruned_model_over_the_size_limit_does_not_stop_the_branch(tmp_path):
    lab = FakeLab(latency={"onnx/fp32": 10.0, "onnx/prune0.25/fp32": 8.0, "onnx/prune0.5/fp32": 6.0}, metric={},
                  size={"onnx/fp32": 900_000, "onnx/prune0.25/fp32": 700_000, "onnx/prune0.5/fp32": 450_000,
                        "onnx/int8-static": 900_000, "onnx/int8-dynamic": 900_000})
    result = search(lab, tmp_path, prune_ratios=(0.25, 0.5), max_size_mb=0.5)
    rows = by_id(result)
    assert rows["onnx/prune0.25/fp32"].status == "rejected" and "> --max-size-mb" in rows["onnx/prune0.25/fp32"].reason
    assert result.chosen.id == "onnx/prune0.5/fp32"


def test_fp32_over_the_size_limit_is_still_the_reference_and_the_report_says_so(tmp_path):
    lab = FakeLab(latency={"onnx/fp32": 10.0, "onnx/int8-static": 9.9, "onnx/int8-dynamic": 12.0}, metric={},
                  size={"onnx/fp32": 900_000, "onnx/int8-static": 300_000, "onnx/int8-dynamic": 250_000})
    result = search(lab, tmp_path, max_size_mb=0.5)
    assert result.chosen.id == "onnx/fp32" and result.baseline.timing is not None
    assert any("itself over --max-size-mb 0.5 (0.900 MB)" in n for n in result.notes)


def test_a_moved_cache_folder_is_still_used(tmp_path):
    import shutil
    table = dict(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0}, metric={})
    Search(config(), FakeLab(**table), Cache(tmp_path / "old")).run()
    shutil.move(tmp_path / "old", tmp_path / "new")
    lab = FakeLab(**table)
    result = Search(config(), lab, Cache(tmp_path / "new")).run()
    assert lab.built_units == [] and lab.timed == []
    assert result.chosen.id == "onnx/int8-static"
    assert Path(result.chosen.built.folder).parent.parent == tmp_path / "new"
    assert (Path(result.chosen.built.folder) / "manifest.json").is_file()


def test_a_second_run_replaces_best_whole(tmp_path):
    table = dict(latency={"onnx/fp32": 10.0, "onnx/int8-static": 5.0}, metric={},
                 size={"onnx/fp32": 1_000_000, "onnx/int8-static": 300_000, "onnx/int8-dynamic": 250_000})
    out = tmp_path / "out"
    out.mkdir()
    env, recipe = {"cpu": X86}, {"model": "m.py:f", "quantize": []}
    for objective, expected in (("p50", "int8-static"), ("size", "int8-dynamic")):
        result = search(FakeLab(**table), tmp_path, objective=objective)
        write_all(out, result, {"objective": objective, "max_drop": 1.0, "budget_minutes": 30.0, "rounds": 3,
                                "threads": 1}, env, {**recipe, "quantize": [expected]})
        assert [a.name for a in Manifest.read(out / "best").artifacts] == [expected]
    assert sorted(p.name for p in out.iterdir()) == ["baseline", "best", "pareto.png", "recipe.yaml", "report.html",
                                                     "report.json", "report.md"]
    assert [a.name for a in Manifest.read(out / "baseline").artifacts] == ["fp32"]   # what best/ was compared with


def test_a_pruned_fp32_unit_is_a_valid_recipe_without_quantization(tmp_path):
    """Pruning when nothing quantized beat FP32: no quantize step, so the recipe carries no max_drop
    (the search applies the budget itself; the pipeline refuses max_drop without quantize)."""
    from edgeai.optimize.builder import _to_recipe, unit_recipe
    from edgeai.recipe import validate

    np.savez(tmp_path / "e.npz", x=np.zeros((2, 4), np.float32))
    config = {"model": "m.py:f", "inputs": ("x:batch,4",), "export": {}, "eval_data": str(tmp_path / "e.npz"),
              "calibration": None, "train_data": None, "max_drop": 0.5}
    pruned = unit_recipe(config, "onnx", ({"prune": {"ratio": 0.25}},), ())
    validate(_to_recipe(pruned))   # what `edgeai export` checks first
    assert "max_drop" not in pruned
    quantized = _to_recipe(unit_recipe(config, "onnx", ({"prune": {"ratio": 0.25}},), ("int8-dynamic",)))
    validate(quantized)
    assert quantized.max_drop == 0.5


@pytest.mark.parametrize("cpu, reduce_range, round_to", [
    ({"machine": "aarch64", "flags": ["asimd", "asimddp"]}, False, 8),          # a Pi 5: dot product, NEON
    ({"machine": "x86_64", "flags": ["avx2", "fma"]}, True, 8),                  # x86 without VNNI: 7-bit weights
    ({"machine": "x86_64", "flags": ["avx512f", "avx512_vnni"]}, False, 16),
])
def test_builds_for_a_device_take_the_devices_cpu_defaults(tmp_path, cpu, reduce_range, round_to):
    from edgeai.optimize.builder import _to_recipe, target_options, unit_recipe
    from edgeai.recipe import validate

    np.savez(tmp_path / "e.npz", x=np.zeros((2, 4), np.float32))
    config = {"model": "m.py:f", "inputs": ("x:batch,4",), "export": {}, "eval_data": str(tmp_path / "e.npz"),
              "calibration": None, "train_data": None, "max_drop": 0.5}
    target = target_options(cpu)
    assert target == {"reduce_range": reduce_range, "round_to": round_to}
    recipe = unit_recipe(config, "onnx", ({"prune": {"ratio": 0.5}},), ("int8-dynamic", "fp16"), target)
    assert recipe["steps"] == [{"prune": {"ratio": 0.5, "round_to": round_to}}]
    assert recipe["quantize"] == [{"int8-dynamic": {"reduce_range": reduce_range}}, "fp16"]
    validate(_to_recipe(recipe))
    kept = unit_recipe(config, "onnx", ({"prune": {"ratio": 0.5, "round_to": 4}},), (), target)
    assert kept["steps"] == [{"prune": {"ratio": 0.5, "round_to": 4}}]     # what the user set stays
    assert unit_recipe(config, "onnx", (), ("int8-dynamic",))["quantize"] == ["int8-dynamic"]  # this machine
