"""`optimize --ray ADDRESS` on a two-node cluster whose nodes run in their own folders with their own TMPDIR, no
PYTHONPATH and no way to the driver's inputs by path: edgeai and the inputs travel through Ray, the artifacts
come back, and the results are the process pool's."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from test_optimize_ray_shipping import (  # noqa: E402  (one tiny model for both files)
    MODEL_PY, driver_inputs, onnx_graph)

# the metric notes, on the node that runs it, where its own file and edgeai were imported from
METRIC_PY = """import json, os, sys
import numpy as np


def neg_mse(outputs, labels):
    seen = os.environ.get("EDGEAI_TEST_NODE")
    if seen:
        import edgeai
        with open(os.path.join(seen, "seen.jsonl"), "a") as f:
            f.write(json.dumps({"metric": __file__, "edgeai": edgeai.__file__, "cwd": os.getcwd()}) + "\\n")
    return -float(np.mean((next(iter(outputs.values())) - labels) ** 2))
"""


class Node:
    """One `ray start --block` in a folder of its own (cwd, TMPDIR, HOME, Ray's temp dir), ended by its id."""

    def __init__(self, root: Path, name: str, args: list[str]):
        self.folder = root / name
        self.tmp = self.folder / "tmp"
        self.tmp.mkdir(parents=True)
        # nothing of another Ray session in this process (ray.init sets RAY_AUTH_MODE=token, for one)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("RAY_")}
        env.update(TMPDIR=str(self.tmp), HOME=str(self.folder), EDGEAI_TEST_NODE=str(self.folder),
                   RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
        ray_cli = Path(sys.executable).with_name("ray")
        self.proc = subprocess.Popen([str(ray_cli), "start", "--block", "--num-cpus=1", f"--temp-dir={self.tmp}/ray",
                                      "--disable-usage-stats", *args], cwd=self.folder, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self._wait_started()

    def _wait_started(self, timeout: float = 120.0) -> None:
        end, lines = time.monotonic() + timeout, []
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            lines.append(line)
            if "Ray runtime started" in line:
                return
        raise RuntimeError(f"ray start did not start:\n{''.join(lines)[-3000:]}")

    def mine(self) -> list:
        """The processes of this node: the `ray start` and every process whose command line names its temp dir."""
        found = [psutil.Process(self.proc.pid)] if self.proc.poll() is None else []
        for p in psutil.process_iter(["cmdline"]):
            with_dir = str(self.tmp) in " ".join(p.info["cmdline"] or ())
            if with_dir and p.pid != self.proc.pid:
                found.append(p)
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)   # `ray start --block` stops its node's processes
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.stdout.close()
        for _ in range(20):
            left = [p for p in self.mine() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            if not left:
                return
            for p in left:
                p.kill()
            time.sleep(0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    # a short root: Ray's unix sockets live below --temp-dir and their paths may not pass 107 characters
    root = Path(tempfile.mkdtemp(prefix="eai-rc-", dir="/tmp"))
    nodes = []
    try:
        port = _free_port()
        nodes.append(Node(root, "head", ["--head", f"--port={port}", "--include-dashboard=false"]))
        nodes.append(Node(root, "worker", [f"--address=127.0.0.1:{port}"]))
        ray.init(address=f"127.0.0.1:{port}")
        try:
            end = time.monotonic() + 60
            while sum(n["Alive"] for n in ray.nodes()) < 2 and time.monotonic() < end:
                time.sleep(0.5)
            assert sum(n["Alive"] for n in ray.nodes()) == 2, ray.nodes()
        finally:
            ray.shutdown()   # the Lab connects by itself, as `--ray ADDRESS` does
        yield {"address": f"127.0.0.1:{port}", "head": nodes[0], "worker": nodes[1]}
    finally:
        for node in reversed(nodes):
            node.stop()
        leftover = [p.pid for n in nodes for p in n.mine()]
        shutil.rmtree(root, ignore_errors=True)
        assert not leftover, f"Ray processes left behind: {leftover}"


@pytest.fixture
def driver(tmp_path):
    return driver_inputs(tmp_path, METRIC_PY)


def _build(driver, work, **where):
    from edgeai.optimize.candidates import Unit
    from edgeai.optimize.config import OptimizeConfig
    from edgeai.optimize.lab import PipelineLab

    cfg = OptimizeConfig(model=f"{driver}/model.py:make", inputs=("x:batch,6",), eval_data=str(driver / "eval.npz"),
                         metric=f"{driver}/metric.py:neg_mse", max_drop=1.0, formats=("onnx",), **where)
    lab = PipelineLab(cfg, work / "lab")
    units = [Unit("onnx", (), ("int8-dynamic",)), Unit("onnx", ({"prune": {"ratio": 0.25}},), ())]   # a task per node
    dests = {cid: work / cid.replace("/", "_") for cid in ("onnx/fp32", "onnx/int8-dynamic", "onnx/prune0.25/fp32")}
    for d in dests.values():
        d.mkdir(parents=True)
    try:
        return lab.build(units, dests), dests
    finally:
        lab.close()


@pytest.mark.slow  # ~60 s on 2 cores: two nodes start, two units build there and again in the process pool
def test_builds_on_a_two_node_cluster_ship_code_and_inputs_and_match_the_process_pool(cluster, driver, tmp_path):
    from edgeai.manifest import Manifest

    built, dests = _build(driver, tmp_path / "ray", ray=cluster["address"])
    pooled, _ = _build(driver, tmp_path / "pool")
    for cid, want in pooled.items():
        got = built[cid]
        assert want.error is None and got.error is None, (want, got)
        assert got.folder == str(dests[cid]) and (got.metric, got.value) == (want.metric, want.value)
        a, b = Manifest.read(got.folder), Manifest.read(want.folder)
        assert onnx_graph(Path(got.folder, a.artifacts[0].file)) == onnx_graph(Path(want.folder, b.artifacts[0].file))
        assert json.dumps(a.source) == json.dumps(b.source)   # named as the driver names its inputs

    seen = {name: [json.loads(line) for line in (cluster[name].folder / "seen.jsonl").read_text().splitlines()]
            for name in ("head", "worker") if (cluster[name].folder / "seen.jsonl").exists()}
    assert seen.get("worker"), "no build ran on the second node"
    repo = str(Path(__file__).resolve().parent.parent)
    for name, rows in seen.items():
        node = cluster[name]
        for row in rows:   # the node's own copies: its temp dir, edgeai from the job's working_dir, not the checkout
            assert row["metric"].startswith(str(node.tmp)) and str(driver) not in row["metric"], row
            assert row["edgeai"].startswith(str(node.tmp)) and "runtime_resources" in row["edgeai"], row
            assert row["cwd"].startswith(str(node.tmp)), row
            assert not row["edgeai"].startswith(repo) and row["cwd"] != os.getcwd(), row
    for name in ("head", "worker"):   # every unit folder on the nodes is gone
        units = cluster[name].tmp / "edgeai-ray-units"
        assert not units.exists() or not list(units.iterdir())


# a model that takes two minutes to load on a node (at once on the driver): a build that is surely running
SLOW_MODEL_PY = MODEL_PY + """

def slow():
    import os, time
    node = os.environ.get("EDGEAI_TEST_NODE")
    if node:
        open(os.path.join(node, "started"), "w").close()
        for _ in range(1200):   # Python code, as most of a build is: Ray's cancel interrupts it between sleeps
            time.sleep(0.1)
    return make()
"""


@pytest.mark.slow  # ~30 s, with the cluster of the test above
def test_a_cluster_build_running_at_the_deadline_is_stopped_and_its_node_folder_removed(cluster, driver, tmp_path):
    from edgeai.optimize.candidates import Unit
    from edgeai.optimize.config import OptimizeConfig
    from edgeai.optimize.lab import PipelineLab

    (driver / "slow.py").write_text(SLOW_MODEL_PY)
    cfg = OptimizeConfig(model=f"{driver}/slow.py:slow", inputs=("x:batch,6",), eval_data=str(driver / "eval.npz"),
                         max_drop=1.0, formats=("onnx",), ray=cluster["address"])
    lab = PipelineLab(cfg, tmp_path / "lab")
    dest = tmp_path / "cand"
    dest.mkdir()
    t0 = time.monotonic()
    try:
        out = lab.build([Unit("onnx", (), ())], {"onnx/fp32": dest}, deadline=lab.clock() + 25)
    finally:
        lab.close()
    assert time.monotonic() - t0 < 40   # the budget, not the two-minute load, ended it
    assert out["onnx/fp32"].interrupted and "stopped at the budget" in out["onnx/fp32"].error
    assert list(dest.iterdir()) == []
    started = [n for n in ("head", "worker") if (cluster[n].folder / "started").exists()]
    assert started, "the build never started on a node"
    end = time.monotonic() + 30   # the cancelled task unwinds on its node and removes its folder
    while time.monotonic() < end:
        left = [p for n in ("head", "worker") for p in (cluster[n].tmp / "edgeai-ray-units").glob("unit-*")]
        if not left:
            break
        time.sleep(0.5)
    assert not left, left
