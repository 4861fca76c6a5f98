"""Android: benchmark_model's log parsed into the bench schema; adb pushes each file once (adb faked, no phone here).

The logs in tests/data follow the lines TFLite's benchmark_model prints (format of its
benchmark_tflite_model.cc / stats_calculator: a build with p5/median/p95 and an older one
without); they were not captured from a phone in this project.
"""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from edgeai.bench import BenchConfig
from edgeai.bench.android import (Adb, benchmark_flags, bench_over_adb, parse_android_env,
                                  parse_benchmark_output)
from edgeai.bench.devices import AdbDevice, DeviceError, parse_device
from edgeai.bench.env import environment
from edgeai.bench.targets import Target

DATA = Path(__file__).parent / "data"


def test_parser_reads_the_timed_runs_not_the_warmup_with_median():
    run = parse_benchmark_output((DATA / "benchmark_model_median.txt").read_text())
    t = run.timing
    assert (t.n, t.mean_ms, t.std_ms, t.min_ms, t.max_ms, t.p50_ms) == (2468, 0.40437, 0.021, 0.391, 1.207, 0.401)
    assert t.p90_ms is None and t.p99_ms is None and run.p95_ms == 0.419
    assert t.total_s == pytest.approx(0.40437 * 2468 / 1e3)
    assert (run.load_ms, run.first_ms, run.peak_memory_bytes) == (11.861, 1.893, int(8.5 * 2**20))


def test_parser_reads_an_older_build_without_median_as_null_p50():
    run = parse_benchmark_output((DATA / "benchmark_model_no_median.txt").read_text())
    assert run.timing.n == 50 and run.timing.mean_ms == pytest.approx(2950.34) and run.timing.p50_ms is None
    assert run.timing.std_ms == pytest.approx(109.798) and run.first_ms == pytest.approx(3512.391)
    assert run.peak_memory_bytes == int(46.0859 * 2**20)


def test_output_without_timings_is_a_device_error():
    with pytest.raises(DeviceError, match="printed no timing line.*Failed to load model"):
        parse_benchmark_output("STARTING!\nERROR: Could not open 'x.tflite'.\nFailed to load model x.tflite\n")


@pytest.mark.parametrize("runs, min_seconds, expected", [
    (None, None, ["--num_runs=50", "--min_secs=1", "--max_secs=10"]),
    (200, None, ["--num_runs=200", "--min_secs=0", "--max_secs=86400"]),
    (None, 5.0, ["--num_runs=1", "--min_secs=5", "--max_secs=86400"]),
])
def test_stop_rule_maps_to_benchmark_model_flags(runs, min_seconds, expected):
    flags = benchmark_flags(BenchConfig(threads=4, warmup=7, runs=runs, min_seconds=min_seconds))
    assert flags == ["--num_threads=4", "--warmup_runs=7", "--warmup_min_secs=0", *expected]


def test_android_env_has_the_local_keys_and_the_phone_s_facts():
    config = BenchConfig(threads=2)
    env = parse_android_env((DATA / "android_env.txt").read_text(), config, AdbDevice("R5CT", "bm"))
    assert set(env) == set(environment(2, "cpu"))
    assert env["cpu"] == {"model": "Pixel 7 Tensor G2", "machine": "aarch64", "flags": ["asimd", "asimddp", "asimdhp"]}
    assert (env["logical_cores"], env["temperature_c"], env["cpu_governor"]) == (2, 41.5, "sched_pixel")
    assert env["os"]["system"] == "Android 14" and env["device"] == "adb:R5CT"


class FakeAdb(Adb):
    """adb against an in-memory /data/local/tmp: records pushes, answers the shell commands edgeai sends."""

    def __init__(self, serial: str, log: str):
        super().__init__(serial)
        self.files: dict[str, bytes] = {}
        self.pushes: list[str] = []
        self.commands: list[list[str]] = []
        self.log = log

    def _run(self, args, timeout=None):
        def done(out="", rc=0):
            return subprocess.CompletedProcess(["adb", *args], rc, out, "")
        if args[0] == "push":
            self.files[args[2]] = Path(args[1]).read_bytes()
            self.pushes.append(args[2])
            return done()
        command = args[1]
        if command.startswith("echo model="):
            return done((DATA / "android_env.txt").read_text())
        argv = shlex.split(command)
        self.commands.append(argv)
        if argv[0] == "test":
            return done("present\n" if argv[2] in self.files else "", 0 if argv[2] in self.files else 1)
        if argv[0] == "mv":
            self.files[argv[2]] = self.files.pop(argv[1])
            return done()
        if argv[0] in ("mkdir", "chmod"):
            return done()
        assert argv[0] in self.files and argv[1].removeprefix("--graph=") in self.files, argv
        return done(self.log)


def test_adb_bench_pushes_each_file_once_and_reports_the_local_schema(tmp_path):
    binary, model = tmp_path / "benchmark_model", tmp_path / "m.tflite"
    binary.write_bytes(b"\x7fELF fake binary")
    model.write_bytes(b"TFL3 fake model")
    device = parse_device("adb:R5CT", benchmark_binary=str(binary))
    adb = FakeAdb(device.serial, (DATA / "benchmark_model_median.txt").read_text())
    targets = [Target(str(model), "file", str(model), "tflite", size_bytes=15),
               Target("m.onnx", "file", "m.onnx", "onnx")]
    config = BenchConfig(threads=1, device=device.name)

    report = bench_over_adb(targets, config, device, adb=adb)
    assert len(adb.pushes) == 2 and all(p.endswith(".partial") for p in adb.pushes)
    bench_over_adb(targets, config, device, adb=adb)
    assert len(adb.pushes) == 2                              # already on the phone: nothing pushed again

    ok, onnx = report.results
    assert ok.status == "ok" and ok.timing.p50_ms == 0.401 and ok.speedup_vs_baseline == 1.0
    assert "p95 is 0.419 ms" in ok.notes[0]
    assert onnx.status == "failed" and "benchmark_model runs .tflite" in onnx.error
    run = next(c for c in adb.commands if c[0].endswith("benchmark_model") or c[1].startswith("--graph"))
    assert run[1].startswith("--graph=/data/local/tmp/edgeai/") and "--num_runs=50" in run
    d = report.to_dict()
    assert d["schema"] == "edgeai.bench/1" and d["env"]["device"] == "adb:R5CT" == d["config"]["device"]


def test_adb_device_needs_a_benchmark_binary(tmp_path):
    with pytest.raises(DeviceError, match="needs --benchmark-binary"):
        parse_device("adb:R5CT")
    with pytest.raises(DeviceError, match="does not exist"):
        parse_device("adb:R5CT", benchmark_binary=str(tmp_path / "missing"))
