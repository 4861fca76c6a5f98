"""The real Lab: builds candidates with the export pipeline in worker processes (or Ray), times them with `bench`."""
from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import types
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any


from edgeai.errors import ConfigError, MissingDependencyError
from edgeai.fsutil import remove_unlocked
from edgeai.optimize import digests
from edgeai.optimize.builder import build_unit, new_unit_dir, target_options, unit_recipe, worker_init
from edgeai.optimize.candidates import Unit, step_name
from edgeai.optimize.config import OptimizeConfig
from edgeai.optimize.search import Built

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _main_left_alone():
    """Spawned workers that do not run the user's script again. spawn re-imports the parent's __main__
    in every worker, so a plain script that calls edgeai.optimize() without `if __name__ ==
    "__main__":` would start optimize again in each one (and the worker dies). Workers need nothing from
    __main__ (jobs are plain data), so while they start, __main__ is a module with no file to import."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class PipelineLab:
    """Candidates built by `edgeai.export` (a process pool by default, Ray with `config.ray`),
    scored in their own runtime, timed by `edgeai.bench` in fresh processes, one at a time:
    on this machine, or with `config.device` on an ssh host through `edgeai bench --device`'s
    remote bench (builds stay here; the artifacts are copied there once, by sha256), where they
    are scored too, on the evaluation data (score_on_device)."""

    def __init__(self, config: OptimizeConfig, work_dir: Path, teacher_dir: Path | None = None):
        self.config = config
        self.work_dir = work_dir
        self.teacher_dir = teacher_dir   # distillation's teacher outputs, computed once for all candidates
        self.plain = asdict(config)
        self.device = config.timing_device()
        self._device_env = self._probe_device() if self.device else None
        # built for the device: the step defaults that follow the CPU follow its CPU (part of every key)
        self.target = target_options(self._device_env["cpu"]) if self._device_env else None
        self._scorer = None   # with --device: runs candidates there on the eval data (device_accuracy)
        self._identity = {**self._inspect(), "target": self.target}
        self._pool: ProcessPoolExecutor | None = None
        self._ray = self._shipper = None
        self._ray_owned = False
        self._env_before_ray: dict[str, str] = {}
        self._units: dict[str, int] = {}   # unit folders made and not removed yet -> the lock held on each
        remove_unlocked(work_dir.glob("unit-*"))  # left by an optimize that was killed (SIGKILL, power loss)

    # ------------------------------------------------------------------ what the keys are made of
    def _inspect(self) -> dict:
        """Load the model and the data once here: bad input fails now, in the user's terms, and is hashed."""
        from edgeai.data import load_feeds
        from edgeai.pipeline import versions
        from edgeai.source import load_model

        cfg = self.config
        source = load_model(cfg.model, inputs=cfg.inputs, example_inputs=cfg.example_inputs, arch=cfg.arch,
                            trust_pickle=cfg.trust_pickle, dynamic_batch=cfg.dynamic_batch, task=cfg.task)
        self.input_specs = source.input_specs
        data = {}
        for kind, spec in (("eval", cfg.eval_data), ("calibration", cfg.calibration), ("train", cfg.train_data)):
            if spec:
                what = {"eval": "evaluation data", "train": "training data"}.get(kind, "calibration data")
                feeds = load_feeds(spec, source.input_specs, what=what)
                data[kind] = digests.arrays(feeds)
                if kind == "eval" and self.device:   # the reference outputs are computed here, once
                    from edgeai.optimize.device_accuracy import DeviceScorer
                    self._scorer = DeviceScorer(self.device, feeds, source, cfg.metric, cfg.threads)
        if cfg.metric:
            from edgeai.metrics import load_metric
            load_metric(cfg.metric)  # a metric that does not import is bad input: fail before building
        return {"model": digests.model(source), "inputs": [s.to_dict() for s in source.input_specs],
                "data": data, "metric": digests.metric(cfg.metric), "max_drop": cfg.max_drop,
                "export": dict(cfg.export), "versions": versions()}

    def identity(self) -> dict:
        return self._identity

    def cpu(self) -> dict:
        """The CPU candidates are timed on: the device's with --device (what can win is decided there)."""
        if self._device_env is not None:
            return dict(self._device_env["cpu"])
        from edgeai.hw import cpu_info
        return cpu_info()

    def device_env(self) -> dict | None:
        """The timing device's fingerprint (edgeai.bench.env.environment, run there), None for this machine."""
        return self._device_env

    def _probe_device(self) -> dict:
        """Ask the device's edgeai for its fingerprint: an unreachable device fails now, before any build."""
        from edgeai.bench import ssh
        from edgeai.bench.devices import DeviceError

        code = ("import json\ntry:\n    from edgeai.bench.env import environment\n"
                f"    print(json.dumps(environment({int(self.config.threads)}, 'cpu')))\n"
                "except ImportError as e:\n    print(json.dumps({'edgeai_error': str(e)}))\n")
        with tempfile.TemporaryDirectory(prefix="edgeai-ssh-") as tmp:
            device = self.device
            if device.ssh_config:
                device = replace(device, ssh_config=str(ssh.layered_config(device.ssh_config, Path(tmp))))
            out = ssh.run_remote(device, [device.python, "-"], code, "reading its fingerprint", timeout=120)
        try:
            env = json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            env = {"edgeai_error": "it printed no fingerprint"}
        if "edgeai_error" in env:
            raise DeviceError(f"{self.device.name}: {self.device.python} cannot import edgeai's device agent "
                              f"({env['edgeai_error']}); install it there: edgeai device setup {self.device.name}")
        return {**env, "device": self.device.name}

    def clock(self) -> float:
        return time.monotonic()

    def recipe(self, fmt: str, steps: tuple, scheme: str) -> dict:
        """The `edgeai export` recipe that makes this candidate (its artifact is named by the scheme)."""
        quantize = () if scheme == "fp32" else (step_name(fmt, scheme),)
        return _absolute_paths(unit_recipe(self.plain, fmt, steps, quantize, self.target))

    # ------------------------------------------------------------------ building
    def build(self, units: list[Unit], dests: dict[str, Path], deadline: float | None = None,
              after_distill_s: float = 0.0) -> dict[str, Built]:
        """Build `units`; with `deadline` (a clock() time) a distillation is cut to end `after_distill_s`
        before it, and a build still running at it is killed (its candidates come back `interrupted`)."""
        jobs = []
        wall = None if deadline is None else time.time() + (deadline - self.clock())
        for u in units:
            names = {c.scheme: ("fp32" if c.scheme == "fp32" else step_name(u.format, c.scheme)) for c in u.candidates}
            quantize = tuple(names[s] for s in u.schemes)
            jobs.append({"recipe": unit_recipe(self.plain, u.format, u.steps, quantize, self.target),
                         "ids": {names[c.scheme]: c.id for c in u.candidates if c.id in dests},
                         "dests": {c.id: str(dests[c.id]) for c in u.candidates if c.id in dests},
                         "work": str(self._unit_dir()),
                         "deadline": wall, "after_distill_s": after_distill_s,
                         "teacher_cache": str(self.teacher_dir) if self.teacher_dir and u.steps else None,
                         "reference": not u.steps and u.format == self.config.formats[0]})
        results: dict[str, Built] = {}
        try:
            for job, out in zip(jobs, self._run_jobs(jobs, deadline)):
                for cid, fields_ in out.items():
                    results[cid] = Built(**fields_)
        finally:
            for job in jobs:  # the worker removed its unit folder, unless it died or was killed
                self._remove_unit(job["work"])
        return results

    def _unit_dir(self) -> Path:
        """A fresh folder for one unit's build (the worker removes it; so does close, if the worker died).
        It is locked while this Lab lives, so another optimize sharing the cache never takes it for stale."""
        Path(self.work_dir).mkdir(parents=True, exist_ok=True)
        folder, lock = new_unit_dir(self.work_dir)
        self._units[str(folder)] = lock
        return folder

    def _remove_unit(self, folder: str) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        if folder in self._units:
            os.close(self._units.pop(folder))

    def _run_jobs(self, jobs: list[dict], deadline: float | None) -> list[dict]:
        if self.config.ray:
            return self._run_ray(jobs, deadline)
        if self._pool is None:
            # spawn: a fresh interpreter per worker (torch and fork do not mix); reused across units
            self._pool = ProcessPoolExecutor(max_workers=self.config.workers, initializer=worker_init,
                                             mp_context=multiprocessing.get_context("spawn"))
        with _main_left_alone():  # workers start here, in submit
            futures = [self._pool.submit(build_unit, job) for job in jobs]
        out = []
        try:
            for job, fut in zip(jobs, futures):
                timeout = None if deadline is None else max(deadline - self.clock(), 0.0)
                try:
                    out.append(fut.result(timeout=timeout))
                except FutureTimeout:
                    self._kill_pool()
                    out.append(_stopped(job, "stopped at the budget while it was being built"))
                except BrokenProcessPool:
                    self._pool = None   # a runtime killed the worker: the next unit gets a fresh pool
                    out.append(self._rebuild_alone(job))
        except BaseException:   # Stopped (a signal) or an error here: no build outlives the search
            self._kill_pool()
            raise
        return out

    def _rebuild_alone(self, job: dict) -> dict:
        """A unit whose worker died, once more in a process of its own: a second death is the candidate's
        (a runtime that crashes on it, kept in the cache); a first one may be the machine's (memory),
        so it is never cached (`transient`) unless it happens again."""
        for dest in job["dests"].values():  # what the dead worker half wrote goes; the retry starts clean
            shutil.rmtree(dest, ignore_errors=True)
            Path(dest).mkdir(parents=True, exist_ok=True)
        retry = {**job, "work": str(self._unit_dir())}
        pool = ProcessPoolExecutor(max_workers=1, initializer=worker_init,
                                   mp_context=multiprocessing.get_context("spawn"))
        try:
            with _main_left_alone():
                future = pool.submit(build_unit, retry)
            return future.result()
        except BrokenProcessPool:
            return {cid: {"id": cid, "error": "the build process died twice (a runtime crashed on this variant)"}
                    for cid in job["ids"].values()}
        finally:
            pool.shutdown(cancel_futures=True)
            self._remove_unit(retry["work"])

    def _kill_pool(self) -> None:
        """End the build processes now (a build past the deadline, or a signal); the next build starts a pool."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for p in processes:
            p.kill()
        for p in processes:
            p.join(timeout=10)
        pool.shutdown(wait=False, cancel_futures=True)

    def _run_ray(self, jobs: list[dict], deadline: float | None) -> list[dict]:
        """The jobs as Ray tasks: edgeai's code travels as the job's working_dir, each job's input files
        through the object store (shipping.Shipper), and the artifacts come back as bytes written here, so
        no node needs this machine's paths (`local` starts a cluster here and takes the same road)."""
        ray = self._connect_ray()
        shipped = [self._shipper.ship(job) for job in jobs]
        refs = [self._ray.remote(s) for s, _ in shipped]
        out, cancelled = [], set()
        try:
            for i, (job, (_, originals), ref) in enumerate(zip(jobs, shipped, refs)):
                try:
                    if ref in cancelled:
                        raise ray.exceptions.TaskCancelledError()
                    got = ray.get(ref, timeout=None if deadline is None else max(deadline - self.clock(), 0.0))
                except (ray.exceptions.GetTimeoutError, ray.exceptions.TaskCancelledError):
                    if not cancelled:   # the budget is spent: every build still running stops now
                        cancelled.update(_cancel(ray, ray.wait(refs[i:], num_returns=len(refs) - i, timeout=0)[1]))
                    out.append(_stopped(job, "stopped at the budget while it was being built"))
                    continue
                except Exception as e:  # the task's process died, or Ray failed it
                    error = f"the Ray task failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
                    out.append({cid: {"id": cid, "error": error, "transient": True} for cid in job["ids"].values()})
                    continue
                out.append(self._shipper.land(got if isinstance(got, dict) else {}, job, originals))
        except BaseException:   # Stopped (a signal): no task outlives the search
            _cancel(ray, refs)
            raise
        return out

    def _connect_ray(self):
        try:
            import ray
        except ImportError:
            from edgeai.extras import install_command
            raise MissingDependencyError(f"--ray needs the ray package: {install_command('ray')}") from None
        if self._ray is None:
            from edgeai.optimize.shipping import Shipper, build_shipped, staged_code
            self._ray_owned = not ray.is_initialized()   # a session the caller started stays theirs
            self._env_before_ray = dict(os.environ)   # ray.init sets RAY_AUTH_MODE, PYTHONBREAKPOINT, ...
            try:
                if not self._ray_owned:
                    log.info("Ray is already connected: its runtime_env decides how edgeai reaches the nodes")
                else:   # a job-level runtime_env: Ray uploads the working_dir only there
                    with staged_code() as code:
                        env = {"working_dir": str(code), "env_vars": {"OMP_NUM_THREADS": "1"}}
                        if self.config.ray == "local":   # the nodes are this machine: the working folder's modules
                            env["env_vars"]["PYTHONPATH"] = os.pathsep.join(
                                [os.getcwd(), *filter(None, [os.environ.get("PYTHONPATH")])])
                            ray.init(num_cpus=self.config.workers, runtime_env=env, include_dashboard=False,
                                     log_to_driver=False)
                        else:
                            ray.init(address=self.config.ray, runtime_env=env)
            except Exception as e:
                raise ConfigError(f"cannot connect to the Ray cluster at {self.config.ray!r}: "
                                  f"{type(e).__name__}: {e}") from None
            self._ray = ray.remote(build_shipped)
            self._shipper = Shipper(ray.put)
        return ray

    def close(self, abort: bool = False) -> None:
        """Shut the build workers down (`abort`: interrupt the builds running now, e.g. on SIGTERM or an
        error) and remove every unit folder this Lab made, whatever became of its worker."""
        if self._pool is not None:
            if abort:  # a worker unwinds its build (staging removed) and exits; see builder.worker_init
                for proc in list((getattr(self._pool, "_processes", None) or {}).values()):
                    with contextlib.suppress(OSError, ValueError):
                        proc.terminate()
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        for folder in list(self._units):
            self._remove_unit(folder)
        if self._ray is not None:
            if self._ray_owned:   # the objects it put go with the connection; a cluster it started, too
                import ray

                from edgeai.optimize.shipping import restore_environ
                ray.shutdown()
                restore_environ(self._env_before_ray)
            self._ray = self._shipper = None

    def score_on_device(self, folders: dict[str, str]) -> dict[str, dict]:
        """With --device: id -> {"metric", "value"} of each artifact run there by its edgeai.runtime on the
        evaluation data and scored here, or {"error": why the device could not run it}."""
        assert self._scorer is not None, "score_on_device needs --device and evaluation data"
        return self._scorer.score(folders)

    # ------------------------------------------------------------------ timing (serialized, fresh processes)
    def time(self, folders: dict[str, str]) -> dict[str, dict]:
        """Per-round p50/p90 of every folder: each round times all of them, one after the other, each in
        a fresh process; the order rotates between rounds so none always runs first."""
        from edgeai.bench import bench

        cfg = self.config
        ids = list(folders)
        out: dict[str, dict[str, Any]] = {i: {"p50": [], "p90": [], "peak_rss_bytes": None, "error": None}
                                          for i in ids}
        for r in range(cfg.rounds):
            order = ids[r % len(ids):] + ids[:r % len(ids)]
            report = bench([folders[i] for i in order], threads=cfg.threads, min_seconds=cfg.min_seconds, batch=1,
                           device=self.device)
            for cid, res in zip(order, report.results):
                o = out[cid]
                if not res.ok:
                    o["error"] = o["error"] or res.error
                    continue
                o["p50"].append(res.timing.p50_ms)
                o["p90"].append(res.timing.p90_ms)
                o["peak_rss_bytes"] = max(o["peak_rss_bytes"] or 0, res.peak_rss_bytes or 0) or None
        return out


def _cancel(ray, refs: list, grace_s: float = 5.0) -> list:
    """Cancel Ray tasks (returns `refs`): first as an interrupt, so each unwinds and removes its unit folder
    on its node, then outright for those still running after `grace_s` (a build stuck in native code)."""
    for ref in refs:
        ray.cancel(ref)
    if refs:
        for ref in ray.wait(refs, num_returns=len(refs), timeout=grace_s)[1]:
            ray.cancel(ref, force=True)
    return refs


def _stopped(job: dict, why: str) -> dict:
    return {cid: {"id": cid, "error": why, "interrupted": True} for cid in job["ids"].values()}


def _absolute_paths(recipe: dict) -> dict:
    """Files named in the recipe as absolute paths, so it runs from wherever recipe.yaml is."""
    def fix(spec):
        if not spec:
            return spec
        target, sep, name = spec.rpartition(":")
        file = target if sep and target.endswith(".py") else spec
        if not Path(file).exists():
            return spec  # a module:function or package spec
        return str(Path(file).resolve()) + (f":{name}" if file is target else "")
    out = {**recipe, "model": fix(recipe["model"]), "data": {k: fix(v) for k, v in recipe["data"].items()}}
    for key in ("example_inputs", "arch", "metric"):
        if out.get(key):
            out[key] = fix(out[key])
    return out
