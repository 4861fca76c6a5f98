"""The search: build candidates cheap-first, score them, time them against FP32 in interleaved rounds, choose.

The search does not export or time anything itself: a `Lab` does (the real one drives the
export pipeline and the bench protocol; tests use a deterministic one). The search decides
what to build in which order, what to drop, what the cache already holds, and what to choose.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Callable, Protocol

from edgeai.errors import ExportError
from edgeai.optimize.cache import RESULT_NAME, Cache, cached_entry, digest
from edgeai.optimize.choice import choose, rank
from edgeai.optimize.candidates import Candidate, Skip, Unit, base_plan
from edgeai.optimize.config import OptimizeConfig
from edgeai.optimize.device_accuracy import DeviceScore, accuracy, over_budget, score_rows
from edgeai.optimize.planner import SLACK, Costs
from edgeai.optimize.records import Built, Timing
from edgeai.optimize.stop import Stopped

log = logging.getLogger(__name__)



class Lab(Protocol):
    """Where candidates are built and timed."""

    def identity(self) -> dict: ...                 # model digest, data digests, versions: part of every key
    def cpu(self) -> dict: ...                      # edgeai.hw.cpu_info() of the timing target
    def clock(self) -> float: ...                   # seconds, monotonic
    def build(self, units: list[Unit], dests: dict[str, Path], deadline: float | None = None,
              after_distill_s: float = 0.0) -> dict[str, Built]: ...   # only ids in dests; see PipelineLab
    def time(self, folders: dict[str, str]) -> dict[str, dict]: ...   # id -> {p50: [..], p90: [..], peak_rss_bytes, error}
    def score_on_device(self, folders: dict[str, str]) -> dict[str, dict]: ...  # --device: id -> {metric, value} | {error}


@dataclass
class Row:
    """A candidate as the report lists it."""

    candidate: Candidate
    status: str = "pending"              # chosen | ok | rejected | failed | skipped
    reason: str = ""
    built: Built | None = None
    timing: Timing | None = None
    drop: float | None = None
    speedup: float | None = None         # median over rounds, by the objective's statistic (p50 for size)
    device: DeviceScore | None = None    # with --device: its accuracy measured there (device_accuracy)

    @property
    def id(self) -> str:
        return self.candidate.id


@dataclass
class SearchResult:
    rows: list[Row]
    baseline: Row
    chosen: Row
    why: str
    notes: list[str]
    elapsed_s: float
    budget_reached: bool
    stopped: str | None = None           # None: the search ran its plan; "budget" | "SIGINT" | "SIGTERM"
    pruning: dict = field(default_factory=dict)   # how pruned candidates were searched (prune_search)
    formats: list[dict] = field(default_factory=list)   # each format's best against the same baseline


class Search:
    """One run of the search over `lab`, with `cache`; `run()` returns the SearchResult.

    The budget is a wall: `started + budget_minutes` (started: when the command began) bounds the
    whole run, timing and report included. No build starts that its measured cost says cannot end
    in time with its timing and the report after it; a build in flight is given the time left (its
    distillation cut, the process killed at the last moment). At the budget or on SIGINT/SIGTERM
    the search times what it built and returns the best so far with `stopped` saying why."""

    def __init__(self, config: OptimizeConfig, lab: Lab, cache: Cache,
                 progress: Callable[[dict], None] | None = None, started: float | None = None):
        self.config, self.lab, self.cache = config, lab, cache
        self.progress = progress or (lambda event: None)
        self.rows: dict[str, Row] = {}
        self.notes: list[str] = []
        self.identity = lab.identity()
        self.start = lab.clock() if started is None else started
        self.deadline = self.start + config.budget_minutes * 60
        self.budget_reached = False
        self.stopped: str | None = None
        self.baseline: Row | None = None
        self.pruning: dict = {}
        self.build_s: dict[str, float] = {}     # format -> measured seconds of its unpruned unit build
        self.timing_s: float | None = None      # measured seconds to time one candidate (all rounds)
        self.last_build_s: float | None = None  # the last lab.build call's seconds

    # ------------------------------------------------------------------ the plan
    def run(self) -> SearchResult:
        from edgeai.optimize.prune_search import prune_branch

        cfg = self.config
        units, skips = base_plan(cfg.formats, cfg.objective, self.lab.cpu(), bool(cfg.calibration))
        self._plan(units, skips)
        self._build(units[:1], force=True)     # the baseline first: nothing is compared without it
        self.baseline = self.rows[Candidate(cfg.formats[0], "fp32").id]
        if self.baseline.status == "failed":
            raise ExportError(f"the FP32 baseline could not be built: {self.baseline.reason}")
        for row in self.rows.values():  # built beside the baseline, before there was one to compare with
            if row.status == "ok":
                self._check_accuracy_and_size(row)
        try:
            self._time_pending()       # a best so far before anything else is built
            for unit in units[1:]:
                if not self.build_if_it_fits(unit, self._unpruned_estimate(unit)):
                    break
            self._time_pending()
            prune_branch(self)
        except Stopped as e:
            self._stop(e.name)
        try:
            self._time_pending()       # what was built is timed: the reserve kept time for it
        except Stopped as e:
            self._stop(e.name)
        return self._finish()

    # ------------------------------------------------------------------ the budget
    def seconds_left(self) -> float:
        return self.deadline - self.lab.clock()

    def costs(self, fmt: str | None = None, pruned: bool = False) -> Costs:
        """What was measured: a unit's build besides distillation (a pruned one's where one was measured,
        else the format's unpruned build, else the slowest measured), timing one candidate (before any
        timing: a guess from --rounds and --min-seconds)."""
        cfg = self.config
        overhead = (self.build_s.get(f"{fmt}+prune") if pruned else None) or (self.build_s.get(fmt) if fmt else None)
        if overhead is None:
            overhead = max(self.build_s.values(), default=60.0)
        timing = self.timing_s if self.timing_s is not None else cfg.rounds * (cfg.min_seconds + 2.0)
        return Costs(overhead_s=overhead, timing_s=timing)

    def _unpruned_estimate(self, unit: Unit) -> float:
        """Its build, like the format's (else the slowest) unpruned build measured; fits() adds its timing."""
        return SLACK * self.costs(unit.format).overhead_s

    def fits(self, estimate_s: float, candidates: int) -> str | None:
        """None when work estimated at `estimate_s` can be built, timed and reported before the budget,
        else why not."""
        left = self.seconds_left()
        if left <= 0:
            return "budget reached before it was built"
        need = estimate_s + self.costs().reserve_s(candidates)
        if need > left:
            return (f"would not finish within the budget: estimated {need / 60:.1f} min with its timing and "
                    f"the report, {left / 60:.1f} min were left")
        return None

    def build_if_it_fits(self, units: Unit | list[Unit], estimate_s: float, distill_s: float = 0.0) -> bool:
        """Build `units` together (up to --workers at once), then time them, when that fits the budget,
        else mark them skipped and stop at the budget. The build gets the time left: `distill_s` of
        the `estimate_s` estimated to be distillation."""
        units = [units] if isinstance(units, Unit) else list(units)
        candidates = [c for u in units for c in u.candidates]
        missing = [c for c in candidates if self.cache.get_built(self.key(c)) is None]
        why = self.fits(estimate_s, len(candidates)) if missing else None
        if why:
            self._skip(candidates, why)
            self._stop("budget")
            return False
        after = max(estimate_s / SLACK - distill_s, 0.0)   # what follows the distillation in the build
        self._build(units, deadline=self.deadline - self.costs().reserve_s(len(candidates)), after_distill_s=after)
        self._time_pending()
        return True

    def _stop(self, why: str) -> None:
        if self.stopped is None:
            self.stopped = why
            self.notes.append(
                f"stopped early at the budget of {self.config.budget_minutes:g} min with the best so far "
                "(what was built is timed; no build starts that cannot finish within it)" if why == "budget" else
                f"stopped early by {why} after {(self.lab.clock() - self.start) / 60:.1f} min with the best so far "
                "(what was built is timed)")
        self.budget_reached = self.budget_reached or why == "budget"

    # ------------------------------------------------------------------ bookkeeping
    def _plan(self, units: list[Unit], skips: list[Skip]) -> None:
        for u in units:
            for c in u.candidates:
                self.rows.setdefault(c.id, Row(c))
        for s in skips:
            self.rows.setdefault(s.candidate.id, Row(s.candidate, "skipped", s.reason))
        self._report("planned")

    def _skip(self, candidates: list[Candidate], reason: str) -> None:
        for c in candidates:
            row = self.rows.setdefault(c.id, Row(c))
            if row.status == "pending":
                row.status, row.reason = "skipped", reason
        self._report("skipped")

    def key(self, c: Candidate) -> str:
        return digest(self.identity, c.to_dict())

    def _timing_key(self, c: Candidate) -> str:
        cfg = self.config
        return digest(self.key(c), self.key(self.baseline.candidate), cfg.threads, cfg.rounds, cfg.min_seconds,
                      self.lab.cpu(), cfg.device)

    # ------------------------------------------------------------------ building
    def _build(self, units: list[Unit], force: bool = False, deadline: float | None = None,
               after_distill_s: float = 0.0) -> None:
        todo, dests, done = [], {}, []
        for u in units:
            for c in u.candidates:
                self.rows.setdefault(c.id, Row(c))
            missing = []
            for c in u.candidates:
                stored = self.cache.get_built(self.key(c))
                if stored is not None:
                    done.append(self._built(c, cached_entry(Built, stored, self.cache.candidate_dir(self.key(c))
                                                            / RESULT_NAME), cached=True))
                else:
                    missing.append(c)
                    dests[c.id] = self.cache.clear_candidate(self.key(c))
            if missing:  # the unit's FP32 export is redone, but only what is missing is kept and quantized
                todo.append(Unit(u.format, u.steps, tuple(c.scheme for c in missing if c.scheme != "fp32")))
        if not todo:
            self._accept(done)
            return
        self._report(f"building {', '.join(cid for cid in dests)}")
        t0 = self.lab.clock()
        try:
            results = self.lab.build(todo, dests, None if force else deadline, after_distill_s)
        except BaseException:   # a signal: nothing half-built stays in the cache
            for cid, folder in dests.items():
                shutil.rmtree(folder, ignore_errors=True)
            raise
        for u in todo:
            for c in u.candidates:
                if c.id not in dests:
                    continue
                built = results.get(c.id) or Built(c.id, error="the build returned no result")
                if built.interrupted:
                    shutil.rmtree(dests[c.id], ignore_errors=True)
                    self.rows[c.id].status, self.rows[c.id].reason = "skipped", built.error
                    self._stop("budget")
                    continue
                # a rerun after fixing the machine builds it again; one cut short by the budget is not what its key says
                if not built.transient and built.capped_minutes is None:
                    self.cache.put_built(self.key(c), built.to_dict())
                done.append(self._built(c, built, cached=False))
        self._accept(done)   # its device scoring is part of the build's cost
        self.last_build_s = self.lab.clock() - t0
        if len(todo) == 1 and not todo[0].steps:
            self.build_s[todo[0].format] = self.last_build_s

    def _built(self, c: Candidate, built: Built, cached: bool) -> Row:
        row = self.rows.setdefault(c.id, Row(c))
        row.built = built
        if cached:
            log.info("%s: from the cache", c.id)
        if built.error:
            row.status, row.reason = "failed", built.error
        else:
            row.status = "ok"
        self._report(f"built {c.id}")
        return row

    def _accept(self, rows: list[Row]) -> None:
        """Rows just built: scored on the --device too, then checked against the limits once there is a baseline."""
        rows = [r for r in rows if r.status == "ok"]
        if self.config.device and rows:
            score_rows(self, rows)
        if self.baseline is not None:
            for row in rows:
                if row.status == "ok":
                    self._check_accuracy_and_size(row)

    def _check_accuracy_and_size(self, row: Row) -> None:
        if row is self.baseline:  # the reference is kept whatever the limits; _finish says if it breaks one
            return
        cfg, b = self.config, row.built
        value, base = accuracy(row), accuracy(self.baseline)   # the device's numbers with --device
        if value is not None and base is not None:
            row.drop = float(base) - float(value)
            if row.drop > cfg.max_drop + 1e-12:
                row.status = "rejected"
                row.reason = over_budget(row, self.baseline, cfg.max_drop, cfg.device)
                return
        if cfg.max_size_mb is not None and b.size_bytes is not None and b.size_bytes > cfg.max_size_mb * 1e6:
            row.status = "rejected"
            row.reason = f"{b.size_bytes / 1e6:.3f} MB > --max-size-mb {cfg.max_size_mb:g}"

    # ------------------------------------------------------------------ timing (always serialized)
    def _time_pending(self) -> None:
        """Time every built, acceptable, untimed candidate with the baseline in the same rounds."""
        pending = [r for r in self.rows.values() if r.status == "ok" and r.timing is None]
        todo = []
        for r in pending:
            stored = self.cache.get_timing(self._timing_key(r.candidate))
            if stored is not None:
                key = self._timing_key(r.candidate)
                self._timed(r, cached_entry(Timing, stored, self.cache.root / "timings" / f"{key}.json"))
            else:
                todo.append(r)
        if not todo:
            return
        folders = {r.id: r.built.folder for r in todo}
        folders.setdefault(self.baseline.id, self.baseline.built.folder)
        self._report(f"timing {len(folders)} candidates, {self.config.rounds} interleaved rounds")
        t0 = self.lab.clock()
        samples = self.lab.time(folders)
        self.timing_s = (self.lab.clock() - t0) / len(folders)
        base = samples[self.baseline.id]
        for r in todo:
            s = samples[r.id]
            timing = Timing(s["p50"], s["p90"], base["p50"], base["p90"], s.get("peak_rss_bytes"),
                            s.get("error") or base.get("error"))
            if not timing.error:
                self.cache.put_timing(self._timing_key(r.candidate), timing.__dict__)
            self._timed(r, timing)

    def _timed(self, row: Row, timing: Timing) -> None:
        row.timing = timing
        cfg = self.config
        if timing.error:
            row.status, row.reason = "failed", f"benchmark failed: {timing.error}"
            return
        row.speedup = median(timing.speedups("p90" if cfg.objective == "p90" else "p50"))
        if cfg.max_rss_mb is not None and timing.peak_rss_bytes and timing.peak_rss_bytes > cfg.max_rss_mb * 1e6:
            row.status = "rejected"
            row.reason = f"peak RSS {timing.peak_rss_bytes / 1e6:.1f} MB > --max-rss-mb {cfg.max_rss_mb:g}"
        self._report(f"timed {row.id}")

    # ------------------------------------------------------------------ the choice
    def best_unpruned(self) -> dict[str, float]:
        """format -> the best median speedup among its timed, accepted, unpruned candidates (the baseline: 1)."""
        out: dict[str, float] = {}
        for r in self.rows.values():
            if r.status in ("ok", "chosen") and r.speedup is not None and not r.candidate.steps:
                out[r.candidate.format] = max(out.get(r.candidate.format, 0.0), r.speedup)
        return out

    def _finish(self) -> SearchResult:
        from edgeai.optimize.prune_search import format_table

        chosen, why = choose(list(self.rows.values()), self.baseline, self.config.objective)
        size, limit = self.baseline.built.size_bytes, self.config.max_size_mb
        if chosen is self.baseline and limit is not None and size and size > limit * 1e6:
            self.notes.append(f"FP32 is kept but is itself over --max-size-mb {limit:g} ({size / 1e6:.3f} MB): "
                              "no candidate within the limits passed the rules")
        self._report("done")
        return SearchResult(list(self.rows.values()), self.baseline, chosen, why, self.notes,
                            self.lab.clock() - self.start, self.budget_reached, self.stopped, self.pruning,
                            format_table(self))

    def _report(self, message: str) -> None:
        rows = list(self.rows.values())
        best = None
        if self.baseline is not None and self.baseline.timing is not None:
            best = rank(rows, self.baseline, self.config.objective)[0]
        self.progress({"message": message, "total": len(rows),
                       "done": sum(r.status != "pending" and (r.timing is not None or r.status != "ok") for r in rows),
                       "best": best.id if best else None, "best_speedup": best.speedup if best else None,
                       "seconds_left": max(0.0, self.deadline - self.lab.clock())})
