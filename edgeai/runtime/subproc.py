"""Run a model in a child process so that a runtime that aborts (LiteRT's SIGABRT) cannot kill the caller.

`run_isolated(path, feeds)` -> outputs; the child is `python -m edgeai.runtime.subproc` and talks
through .npz/.json files in a temporary folder. A child killed by a signal becomes a RuntimeLoadError;
an EdgeAIError raised in the child is raised again, with its class, in the parent.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgeai import errors
from edgeai.errors import RuntimeLoadError
from edgeai.runtime.base import Session

_RUNTIME_NAMES = {"tflite": "LiteRT", "onnx": "onnxruntime"}


def run_isolated(path: str | Path, feeds: Mapping[str, np.ndarray], fmt: str = "tflite",
                 options: Mapping[str, Any] | None = None, timeout: float = 300.0) -> dict[str, np.ndarray]:
    """Load `path` with the `fmt` runtime in a child process, run `feeds` once, return the outputs."""
    return run_isolated_many(path, [feeds], fmt, options, timeout)[0]


def run_isolated_many(path: str | Path, feeds_list: Sequence[Mapping[str, np.ndarray]], fmt: str = "tflite",
                      options: Mapping[str, Any] | None = None,
                      timeout: float = 300.0) -> list[dict[str, np.ndarray]]:
    """Like run_isolated for several feed sets, loading the model once (one child process)."""
    path = Path(path)
    runtime = _RUNTIME_NAMES.get(fmt, fmt)
    with tempfile.TemporaryDirectory(prefix="edgeai-isolated-") as tmp:
        tmp = Path(tmp)
        for i, feeds in enumerate(feeds_list):
            np.savez(tmp / f"in{i}.npz", **{k: np.asarray(v) for k, v in feeds.items()})
        job = {"path": str(path.resolve()), "fmt": fmt, "options": dict(options or {}), "n": len(feeds_list)}
        (tmp / "job.json").write_text(json.dumps(job))
        env = dict(os.environ)
        pkg_root = str(Path(errors.__file__).resolve().parent.parent)  # the folder holding edgeai/
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
        try:
            proc = subprocess.run(_child_command(tmp), env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeLoadError(f"{runtime} did not finish running {str(path)!r} within {timeout:.0f} s") from None
        if proc.returncode < 0:
            sig = _signal_name(-proc.returncode)
            tail = _last_line(proc.stderr)
            raise RuntimeLoadError(f"{runtime} crashed (signal {sig}) while running {str(path)!r}"
                                   + (f"; its last message: {tail}" if tail else "")
                                   + "; the model is malformed or uses an op this runtime cannot run")
        err_file = tmp / "error.json"
        if err_file.is_file():
            err = json.loads(err_file.read_text())
            cls = getattr(errors, err["type"], None)
            if not (isinstance(cls, type) and issubclass(cls, errors.EdgeAIError)):
                cls = RuntimeLoadError
            raise cls(err["message"])
        if proc.returncode != 0:
            raise RuntimeLoadError(f"the {runtime} child process failed (exit {proc.returncode}) on "
                                   f"{str(path)!r}: {_last_line(proc.stderr)}")
        names = json.loads((tmp / "outputs.json").read_text())
        results = []
        for i in range(len(feeds_list)):
            with np.load(tmp / f"out{i}.npz", allow_pickle=False) as z:
                results.append({name: z[f"arr_{j}"] for j, name in enumerate(names)})
        return results


class IsolatedSession(Session):
    """A model whose runtime may crash (LiteRT aborts on some models), run in a child process.

    Specs are read from the file without the runtime (`read_specs`); feeds are checked here, so a
    wrong feed is a one-line error, and each `run` / `run_many` call loads the model once in a fresh
    child. A crash becomes a RuntimeLoadError naming the signal.
    """

    def __init__(self, path: str | Path, fmt: str, provider: str = "cpu", threads: int | None = None,
                 timeout: float = 300.0):
        from edgeai.runtime import get_runtime
        self.path, self.format, self.timeout = Path(path), fmt, timeout
        self.inputs, self.outputs = get_runtime(fmt).read_specs(self.path)
        self.provider, self.threads = provider, threads
        self._options = {"provider": provider, "threads": threads}

    def run_unchecked(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_isolated(self.path, feeds, self.format, self._options, self.timeout)

    def run_many(self, feed_sets: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return run_isolated_many(self.path, [self.prepare(f) for f in feed_sets], self.format, self._options,
                                 self.timeout)

    def describe(self) -> dict:
        return {**super().describe(), "isolated": True}


def load_guarded(path: str | Path, *, artifact: str | None = None, provider: str = "cpu",
                 threads: int | None = None, verify_digest: bool = True) -> Session:
    """`edgeai.runtime.load`, except that a crash-prone runtime runs in child processes (IsolatedSession)."""
    from edgeai import runtime
    file, fmt = runtime.resolve(path, artifact, verify_digest=verify_digest)
    if runtime.get_runtime(fmt).crash_prone:
        return IsolatedSession(file, fmt, provider=provider, threads=threads)
    return runtime.load(file, provider=provider, threads=threads)


def _child_command(folder: Path) -> list[str]:
    return [sys.executable, "-m", "edgeai.runtime.subproc", str(folder)]


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def _last_line(stderr: bytes | None) -> str:
    lines = [ln.strip() for ln in (stderr or b"").decode(errors="replace").splitlines() if ln.strip()]
    lines = [ln for ln in lines if "XNNPACK" not in ln]  # LiteRT's start-up chatter
    return lines[-1][:300] if lines else ""


def _child(folder: Path) -> int:
    """Entry point of the child: load once, run each feed set, write outputs (or the error)."""
    from edgeai.runtime import get_runtime

    job = json.loads((folder / "job.json").read_text())
    try:
        session = get_runtime(job["fmt"])(job["path"], **job["options"])
        names = [o.name for o in session.outputs]
        for i in range(job["n"]):
            with np.load(folder / f"in{i}.npz", allow_pickle=False) as z:
                feeds = {k: z[k] for k in z.files}
            out = session.run(feeds)
            np.savez(folder / f"out{i}.npz", *[out[n] for n in names])
    except errors.EdgeAIError as e:
        (folder / "error.json").write_text(json.dumps({"type": type(e).__name__, "message": str(e)}))
        return 1
    (folder / "outputs.json").write_text(json.dumps(names))
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
