"""The search: build candidates cheap-first, score them, time them against FP32 in interleaved rounds, choose.

The search does not export or time anything itself: a `Lab` does (the real one drives the
export pipeline and the bench protocol; tests use a deterministic one). The search decides
what to build in which order, what to drop, what the cache already holds, and what to choose.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Callable, Protocol

from edgeai.errors import ExportError
from edgeai.optimize.cache import RESULT_NAME, Cache, cached_entry, digest
from edgeai.optimize.choice import choose, gate, rank
from edgeai.optimize.candidates import Candidate, Skip, Unit, base_plan, prune_units
from edgeai.optimize.config import OptimizeConfig

log = logging.getLogger(__name__)



@dataclass
class Built:
    """A built (exported, verified, scored) candidate, or why it could not be built."""

    id: str
    folder: str | None = None            # a normal export folder holding only this artifact
    size_bytes: int | None = None
    metric: str | None = None            # "top1", "cosine", or the user metric's name
    value: float | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    reference_sha256: str | None = None  # the baseline's outputs on the evaluation data
    transient: bool = False              # the failure was this machine's (a missing package, disk, memory): not cached

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Timing:
    """One candidate's per-round latencies with the baseline's from the same rounds (paired)."""

    p50: list[float]
    p90: list[float]
    base_p50: list[float]
    base_p90: list[float]
    peak_rss_bytes: int | None = None
    error: str | None = None

    def speedups(self, stat: str) -> list[float]:
        base, mine = (self.base_p90, self.p90) if stat == "p90" else (self.base_p50, self.p50)
        return [b / m for b, m in zip(base, mine)]


class Lab(Protocol):
    """Where candidates are built and timed."""

    def identity(self) -> dict: ...                 # model digest, data digests, versions: part of every key
    def cpu(self) -> dict: ...                      # edgeai.hw.cpu_info() of the timing target
    def clock(self) -> float: ...                   # seconds, monotonic
    def build(self, units: list[Unit], dests: dict[str, Path]) -> dict[str, Built]: ...  # only ids in dests
    def time(self, folders: dict[str, str]) -> dict[str, dict]: ...   # id -> {p50: [..], p90: [..], peak_rss_bytes, error}


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


class Search:
    """One run of the search over `lab`, with `cache`; `run()` returns the SearchResult."""

    def __init__(self, config: OptimizeConfig, lab: Lab, cache: Cache,
                 progress: Callable[[dict], None] | None = None):
        self.config, self.lab, self.cache = config, lab, cache
        self.progress = progress or (lambda event: None)
        self.rows: dict[str, Row] = {}
        self.notes: list[str] = []
        self.identity = lab.identity()
        self.start = lab.clock()
        self.deadline = self.start + config.budget_minutes * 60
        self.budget_reached = False
        self.baseline: Row | None = None

    # ------------------------------------------------------------------ the plan
    def run(self) -> SearchResult:
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
        self._build(units[1:])
        self._time_pending()
        self._prune_branch()
        return self._finish()

    def _prune_branch(self) -> None:
        cfg = self.config
        ratios = cfg.ratios
        if not ratios:
            return
        if cfg.model.endswith(".onnx"):
            self.notes.append("pruning skipped: it needs a PyTorch model, not an ONNX file")
            return
        fmt, schemes = self._prune_format()
        units = prune_units(fmt, ratios, dict(cfg.distill) if cfg.train_data else None, schemes)
        self._plan(units, [])
        if not cfg.train_data:
            self.notes.append("pruning without --train-data is not distilled (accuracy usually drops fast)")
        others = [f for f in cfg.formats if f != fmt]
        if others:
            self.notes.append(f"pruning tried in {fmt} only (the format of the fastest unpruned candidate), "
                              f"not in {', '.join(others)}")
        step, last_build_s = max(1, cfg.workers), 0.0
        for i in range(0, len(units), step):
            batch = units[i:i + step]
            left = self.deadline - self.lab.clock()
            if self._over_budget() or last_build_s > left:
                why = ("budget reached before it was built" if left <= 0 else
                       f"would not finish within the budget: the last pruned build took {last_build_s / 60:.1f} min, "
                       f"{left / 60:.1f} min were left")
                self._note_budget()
                self._skip([c for u in units[i:] for c in u.candidates], why)
                return
            t0 = self.lab.clock()
            self._build(batch)
            last_build_s = self.lab.clock() - t0
            self._time_pending()
            failed = next((u for u in batch if self._branch_fails(self.rows[u.candidates[0].id])), None)
            if failed is not None:
                rest = [c for u in units[i + step:] for c in u.candidates]
                self._skip(rest, f"a smaller pruning ({self.rows[failed.candidates[0].id].id}) already "
                                 f"failed: {self.rows[failed.candidates[0].id].reason}")
                return

    def _branch_fails(self, row: Row) -> bool:
        """A pruned FP32 model that could not be built or lost too much accuracy: more pruning will not help.
        (One over --max-size-mb does not stop the branch: more pruning makes it smaller.)"""
        over = row.drop is not None and row.drop > self.config.max_drop + 1e-12
        return row.status == "failed" or (row.status == "rejected" and over)

    def _prune_format(self) -> tuple[str, tuple[str, ...]]:
        """Prune where the unpruned search was fastest, and quantize with the schemes that beat FP32 there."""
        stat = "p90" if self.config.objective == "p90" else "p50"
        fast = [r for r in self.rows.values() if r.status == "ok" and r.timing and not r.candidate.steps
                and gate(r.timing.speedups(stat))[0]]
        fmt = max(fast, key=lambda r: median(r.timing.speedups(stat))).candidate.format if fast \
            else self.config.formats[0]
        schemes = tuple(r.candidate.scheme for r in fast if r.candidate.format == fmt and r.candidate.scheme != "fp32")
        return fmt, schemes

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
            row = self.rows[c.id]
            if row.status == "pending":
                row.status, row.reason = "skipped", reason
        self._report("skipped")

    def _over_budget(self) -> bool:
        if self.lab.clock() >= self.deadline:
            self._note_budget()
        return self.budget_reached

    def _note_budget(self) -> None:
        if not self.budget_reached:
            self.notes.append(f"stopped at the budget of {self.config.budget_minutes:g} min with the best so far "
                              "(what was built is timed; no build starts after the budget)")
        self.budget_reached = True

    def key(self, c: Candidate) -> str:
        return digest(self.identity, c.to_dict())

    def _timing_key(self, c: Candidate) -> str:
        cfg = self.config
        return digest(self.key(c), self.key(self.baseline.candidate), cfg.threads, cfg.rounds, cfg.min_seconds,
                      self.lab.cpu(), cfg.device)

    # ------------------------------------------------------------------ building
    def _build(self, units: list[Unit], force: bool = False) -> None:
        todo, dests = [], {}
        for u in units:
            if not force and self._over_budget():
                self._skip(u.candidates, "budget reached before it was built")
                continue
            missing = []
            for c in u.candidates:
                stored = self.cache.get_built(self.key(c))
                if stored is not None:
                    self._built(c, cached_entry(Built, stored, self.cache.candidate_dir(self.key(c)) / RESULT_NAME),
                                cached=True)
                else:
                    missing.append(c)
                    dests[c.id] = self.cache.clear_candidate(self.key(c))
            if missing:  # the unit's FP32 export is redone, but only what is missing is kept and quantized
                todo.append(Unit(u.format, u.steps, tuple(c.scheme for c in missing if c.scheme != "fp32")))
        if not todo:
            return
        self._report(f"building {', '.join(cid for cid in dests)}")
        results = self.lab.build(todo, dests)
        for u in todo:
            for c in u.candidates:
                if c.id not in dests:
                    continue
                built = results.get(c.id) or Built(c.id, error="the build returned no result")
                if not built.transient:  # a rerun after fixing the machine builds it again
                    self.cache.put_built(self.key(c), built.to_dict())
                self._built(c, built, cached=False)

    def _built(self, c: Candidate, built: Built, cached: bool) -> None:
        row = self.rows.setdefault(c.id, Row(c))
        row.built = built
        if cached:
            log.info("%s: from the cache", c.id)
        if built.error:
            row.status, row.reason = "failed", built.error
        else:
            row.status = "ok"
            if self.baseline is not None:
                self._check_accuracy_and_size(row)
        self._report(f"built {c.id}")

    def _check_accuracy_and_size(self, row: Row) -> None:
        if row is self.baseline:  # the reference is kept whatever the limits; _finish says if it breaks one
            return
        cfg, b = self.config, row.built
        base = self.baseline.built
        if b.value is not None and base.value is not None:
            row.drop = float(base.value) - float(b.value)
            if row.drop > cfg.max_drop + 1e-12:
                row.status = "rejected"
                row.reason = f"{b.metric} drop {row.drop:.4g} > --max-drop {cfg.max_drop:g}"
                return
        if cfg.max_size_mb is not None and b.size_bytes is not None and b.size_bytes > cfg.max_size_mb * 1e6:
            row.status = "rejected"
            row.reason = f"{b.size_bytes / 1e6:.3f} MB > --max-size-mb {cfg.max_size_mb:g}"

    # ------------------------------------------------------------------ timing (always serialized)
    def _time_pending(self) -> None:
        """Time every built, acceptable, untimed candidate with the baseline in the same rounds.

        Timing is a small part of a candidate's cost (its build is the large one), so what was
        built is timed even past the budget: the budget stops new builds."""
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
        samples = self.lab.time(folders)
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
    def _finish(self) -> SearchResult:
        chosen, why = choose(list(self.rows.values()), self.baseline, self.config.objective)
        over = self.lab.clock() - self.deadline
        if over > 0:
            self.notes.append(f"finished {over / 60:.1f} min past the {self.config.budget_minutes:g} min budget: "
                              "a build started within it ran over, and what was built was timed")
        size, limit = self.baseline.built.size_bytes, self.config.max_size_mb
        if chosen is self.baseline and limit is not None and size and size > limit * 1e6:
            self.notes.append(f"FP32 is kept but is itself over --max-size-mb {limit:g} ({size / 1e6:.3f} MB): "
                              "no candidate within the limits passed the rules")
        self._report("done")
        return SearchResult(list(self.rows.values()), self.baseline, chosen, why, self.notes,
                            self.lab.clock() - self.start, self.budget_reached)

    def _report(self, message: str) -> None:
        rows = list(self.rows.values())
        best = None
        if self.baseline is not None and self.baseline.timing is not None:
            best = rank(rows, self.baseline, self.config.objective)[0]
        self.progress({"message": message, "total": len(rows),
                       "done": sum(r.status != "pending" and (r.timing is not None or r.status != "ok") for r in rows),
                       "best": best.id if best else None, "best_speedup": best.speedup if best else None,
                       "seconds_left": max(0.0, self.deadline - self.lab.clock())})
