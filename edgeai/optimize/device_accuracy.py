"""Accuracy measured where it runs: with --device, each candidate's artifact runs there on the evaluation data.

The host builds and scores every candidate in its own runtime (the export pipeline); with
`--device ssh://HOST` the same artifact also runs on the device, in the device's `edgeai.runtime`
(its kernels: ARM INT8 included), on the same evaluation inputs, and its outputs come back to be
scored here by the same metric (the user metric, top-1 with labels, else cosine to the original
model). The accuracy budget is then judged on the device's numbers; the report keeps both.
"""
from __future__ import annotations

import logging
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from edgeai.bench.devices import DeviceError

if TYPE_CHECKING:
    from edgeai.bench.devices import SshDevice
    from edgeai.optimize.search import Row, Search

log = logging.getLogger(__name__)


@dataclass
class DeviceScore:
    """One candidate's metric measured on the device, or why the device could not run it."""

    metric: str | None = None
    value: float | None = None
    error: str | None = None


# ------------------------------------------------------------------ the search's side
def score_rows(search: Search, rows: list[Row]) -> None:
    """Give each built, acceptable row its device score (from the cache, else measured through the lab);
    a row the device cannot run is rejected with the reason. The FP32 baseline must run there."""
    try:
        _score_rows(search, rows)
    except BaseException:   # a signal (or the device lost) while scoring: none of these is judged, so none wins
        for r in rows:
            r.status, r.reason = "skipped", f"stopped before its accuracy was measured on {search.config.device}"
        raise


def _score_rows(search: Search, rows: list[Row]) -> None:
    from edgeai.optimize.cache import cached_entry
    from edgeai.optimize.candidates import Candidate

    cfg = search.config
    todo = {}
    for row in rows:
        key = _score_key(search, row)
        stored = search.cache.get_device_score(key)
        if stored is not None:
            row.device = cached_entry(DeviceScore, stored, search.cache.device_score_path(key))
        else:
            todo[row.id] = row
    if todo:
        search._report(f"scoring {len(todo)} candidates on {cfg.device}")
        measured = search.lab.score_on_device({cid: r.built.folder for cid, r in todo.items()})
        for cid, row in todo.items():
            row.device = DeviceScore(**measured[cid])
            if row.device.error is None:   # a failure there may be the device's state (memory): tried again next run
                search.cache.put_device_score(_score_key(search, row), row.device.__dict__)
    baseline = Candidate(cfg.formats[0], "fp32")
    for row in rows:
        if row.device.error is None:
            log.info("%s: %s %.6g on %s (%.6g here)", row.id, row.device.metric, row.device.value, cfg.device,
                     row.built.value)
            continue
        if row.candidate == baseline:   # nothing can be compared on the device without it
            raise DeviceError(f"the FP32 baseline {row.id} cannot run on {cfg.device}: {row.device.error}")
        row.status, row.reason = "rejected", f"cannot run on {cfg.device}: {row.device.error}"


def _score_key(search: Search, row: Row) -> str:
    from edgeai.optimize.cache import digest
    return digest(search.key(row.candidate), "accuracy", search.config.device, search.lab.cpu())


def accuracy(row: Row) -> float | None:
    """The number the accuracy budget judges: the device's when it was measured there, else this machine's."""
    if row.device is not None and row.device.value is not None:
        return row.device.value
    return row.built.value if row.built else None


def measured_on(row: Row, device: str | None) -> str | None:
    """Where accuracy(row) was measured: the device's URL, or "host"."""
    if row.built is None or row.built.value is None:
        return None
    return device if row.device is not None and row.device.value is not None else "host"


def over_budget(row: Row, baseline: Row, max_drop: float, device: str | None) -> str:
    """Why `row` is over --max-drop, naming the device's numbers and this machine's when both exist."""
    metric = row.built.metric
    if device is None or measured_on(row, device) != device:
        return f"{metric} drop {row.drop:.4g} > --max-drop {max_drop:g}"
    host_drop = baseline.built.value - row.built.value
    verdict = "within it" if host_drop <= max_drop + 1e-12 else "over it too"
    return (f"{metric} drop {row.drop:.4g} on {device} ({row.device.value:.6g}, FP32 {baseline.device.value:.6g}) "
            f"> --max-drop {max_drop:g}; on this machine drop {host_drop:.4g} ({row.built.value:.6g}), {verdict}")


# ------------------------------------------------------------------ the lab's side
class DeviceScorer:
    """Runs artifacts on `device` (edgeai.bench.ssh_run) on the evaluation inputs and scores their outputs
    here with the metric the export pipeline uses; the reference outputs are computed once, here."""

    def __init__(self, device: SshDevice, feeds: Mapping[str, np.ndarray], source, metric: str | None,
                 threads: int):
        from edgeai.data import split_labels
        from edgeai.measure import reference_outputs
        from edgeai.metrics import load_metric

        self.device, self.threads = device, threads
        self.feeds, self.labels = split_labels(dict(feeds))
        self.metric = load_metric(metric)
        self.reference = (reference_outputs(source, self.feeds)
                          if self.labels is None and self.metric is None else None)

    def score(self, folders: Mapping[str, str]) -> dict[str, dict]:
        """id -> {"metric", "value"} measured on the device, or {"error": why it could not run there}."""
        from edgeai.bench.ssh_run import outputs_over_ssh
        from edgeai.bench.targets import expand_targets
        from edgeai.manifest import Manifest
        from edgeai.verify import to_artifact_layout

        with tempfile.TemporaryDirectory(prefix="edgeai-device-eval-") as tmp:
            jobs, written = [], {}
            for folder in folders.values():
                entry = Manifest.read(folder).artifacts[0]
                feeds = to_artifact_layout(self.feeds, entry.details)   # NCHW -> NHWC where it was exported so
                layout = tuple(sorted((entry.details or {}).get("channels_last_inputs", ())))
                if layout not in written:
                    written[layout] = stable_npz(feeds, Path(tmp) / f"inputs-{len(written)}.npz")
                jobs.append((expand_targets([folder])[0], written[layout]))
            # a user metric reads every output; top-1 and cosine the first (less to bring back)
            results = outputs_over_ssh(self.device, jobs, self.threads, first_only=self.metric is None)
        return {cid: self._scored(r) for cid, r in zip(folders, results)}

    def _scored(self, result: dict) -> dict:
        from edgeai.evaluate import score_outputs

        if "error" in result:
            return {"error": result["error"]}
        outputs = result["outputs"]
        try:
            r = score_outputs(outputs, next(iter(outputs)), labels=self.labels, reference=self.reference,
                              metric=self.metric)
        except Exception as e:   # outputs the metric cannot take: that candidate's, on that device
            return {"error": f"its outputs there could not be scored: {type(e).__name__}: {e}"}
        return {"metric": r.metric, "value": float(r.value)}


def stable_npz(arrays: Mapping[str, np.ndarray], path: Path) -> Path:
    """An .npz whose bytes depend on the arrays only (no timestamps), so the device keeps one copy by sha256
    across runs; np.load reads it as any .npz."""
    with zipfile.ZipFile(path, "w") as z:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)
    return path

