"""How much edgeai's timing harness adds to a ~1 ms model: bare `InferenceSession.run` vs time_session vs `edgeai bench`.

Run from the repository root:  python benchmarks/harness_overhead.py  (about 40 s on 2 cores).
Everything is measured in one process, the three methods interleaved repetition by repetition
(order rotated) so that machine noise hits all of them alike; the isolated path's timed runs
happen in its worker process. Writes benchmarks/results/runs/harness_overhead-TIMESTAMP.json
(benchmarks/results/harness_overhead.json with --write-results).
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout

import _common as C  # noqa: E402
from edgeai import runtime  # noqa: E402
from edgeai.bench import bench, time_session  # noqa: E402
from edgeai.bench.env import environment  # noqa: E402
from edgeai.bench.stats import TimingStats  # noqa: E402

TARGET_PCT = 2.0


def build_conv_net(path: Path, channels: int, size: int, layers: int) -> dict:
    """x[1, C, H, W] -> (Conv3x3 + Relu) * layers -> GlobalAveragePool, with onnx.helper (fixed seed)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.1
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["y"]))
    graph = helper.make_graph(nodes, "convnet",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return {"layers": layers, "channels": channels, "input_shape": [1, channels, size, size],
            "macs": layers * channels * channels * 9 * size * size, "size_bytes": path.stat().st_size}


def build_identity(path: Path) -> None:
    """y = x on a 1x4 float tensor: a run costs only the runtime's and the harness's fixed overhead."""
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def fixed_cost_ns(path: Path, repeats: int = 15, runs: int = 4000) -> tuple[float, float, float]:
    """p50 per run (ns) of the bare loop and of time_session on the Identity model, interleaved;
    returns the medians over repeats and the median of the paired differences."""
    build_identity(path)
    sess = runtime.load(path, threads=1)
    feeds, raw_run = {"x": np.zeros((1, 4), np.float32)}, sess.inference_session.run
    bare, ours = [], []
    for _ in range(repeats):
        bare.append(bare_loop(raw_run, ["y"], feeds, 100, runs).p50_ms * 1e6)
        ours.append(time_session(sess, feeds, 100, runs).p50_ms * 1e6)
    return statistics.median(bare), statistics.median(ours), statistics.median(o - b for o, b in zip(ours, bare))


def bare_loop(run, names, feeds, warmup: int, runs: int) -> TimingStats:
    """What a user would write: time each onnxruntime call with perf_counter_ns."""
    for _ in range(warmup):
        run(names, feeds)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        run(names, feeds)
        samples.append(time.perf_counter_ns() - t0)
    return TimingStats.from_samples(np.asarray(samples) / 1e6)


def main() -> int:
    ap = C.parser(__doc__)
    ap.add_argument("--reps", type=int, default=20, help="interleaved repetitions (default 20)")
    ap.add_argument("--runs", type=int, default=200, help="timed runs per method per repetition")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None,
                    help="where to write the report (default: see --write-results)")
    args = ap.parse_args()
    args.json = args.json or C.result_path("harness_overhead", args.write_results)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "convnet.onnx"
        model = build_conv_net(path, channels=32, size=44, layers=3)  # ~1 ms on one x86 core
        sess = runtime.load(path, threads=1)
        feeds = {"x": np.random.default_rng(0).standard_normal(model["input_shape"]).astype(np.float32)}
        # the same InferenceSession object both ways, so only the harness differs
        raw_run, names = sess.inference_session.run, [o.name for o in sess.outputs]
        methods = {
            "bare": lambda: bare_loop(raw_run, names, feeds, args.warmup, args.runs),
            "time_session": lambda: time_session(sess, feeds, args.warmup, args.runs),
            "isolated": lambda: bench([path], warmup=args.warmup, runs=args.runs).results[0].timing,
        }
        reps = []
        for rep in range(args.reps):
            order = list(methods)[rep % 3:] + list(methods)[:rep % 3]
            reps.append({name: methods[name]().to_dict() for name in order})
            print(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{k} p50 {v['p50_ms']:.4f} ms"
                                                            for k, v in reps[-1].items()), flush=True)
        bare_ns, ours_ns, extra_ns = fixed_cost_ns(Path(tmp) / "identity.onnx")

    summary = summarize(reps)
    summary.update(identity_bare_p50_ns=bare_ns, identity_time_session_p50_ns=ours_ns,
                   harness_ns_per_run=extra_ns)
    report = {
        "schema": "edgeai.bench.harness_overhead/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "env": environment(threads=1, provider="cpu"),
        "model": model,
        "config": {"reps": args.reps, "runs": args.runs, "warmup": args.warmup, "threads": 1},
        "target_overhead_pct": TARGET_PCT,
        "summary": summary,
        "within_target": {m: summary[f"{m}_overhead_pct"] <= TARGET_PCT for m in ("time_session", "isolated")},
        "reps": reps,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_table(summary)
    print(f"wrote {args.json}")
    return 0


def summarize(reps: list[dict]) -> dict:
    """Medians over repetitions of each method's p50 and mean, and the overheads relative to bare."""
    out = {}
    for name in ("bare", "time_session", "isolated"):
        out[f"{name}_p50_ms"] = statistics.median(r[name]["p50_ms"] for r in reps)
        out[f"{name}_mean_ms"] = statistics.median(r[name]["mean_ms"] for r in reps)
    for name in ("time_session", "isolated"):
        out[f"{name}_overhead_pct"] = 100 * (out[f"{name}_p50_ms"] / out["bare_p50_ms"] - 1)
        paired = [r[name]["p50_ms"] / r["bare"]["p50_ms"] for r in reps]  # same repetition, same noise
        out[f"{name}_paired_overhead_pct"] = 100 * (statistics.median(paired) - 1)
        out[f"{name}_paired_overhead_pct_range"] = [100 * (min(paired) - 1), 100 * (max(paired) - 1)]
    return out


def print_table(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title="harness overhead (median over repetitions)")
    for col in ("method", "p50 ms", "mean ms", "p50 vs bare", "paired p50 vs bare (min..max)"):
        t.add_column(col, justify="left" if col == "method" else "right")
    t.add_row("bare InferenceSession.run loop", f"{s['bare_p50_ms']:.4f}", f"{s['bare_mean_ms']:.4f}", "-", "-")
    for name, label in (("time_session", "edgeai time_session"), ("isolated", "edgeai bench (worker process)")):
        lo, hi = s[f"{name}_paired_overhead_pct_range"]
        t.add_row(label, f"{s[f'{name}_p50_ms']:.4f}", f"{s[f'{name}_mean_ms']:.4f}",
                  f"{s[f'{name}_overhead_pct']:+.2f}%",
                  f"{s[f'{name}_paired_overhead_pct']:+.2f}% ({lo:+.1f}..{hi:+.1f})")
    Console().print(t)
    print(f"fixed cost per run on a 1x4 Identity model (p50): bare {s['identity_bare_p50_ns']:.0f} ns, "
          f"time_session {s['identity_time_session_p50_ns']:.0f} ns: the harness adds "
          f"{s['harness_ns_per_run']:.0f} ns per run (median of paired differences)")


if __name__ == "__main__":
    sys.exit(main())
