"""Static INT8 calibration with onnxruntime's calibrator: activation ranges saved where quantize_static reads them,
with batch progress and the time left (edgeai.progress) while the calibrator runs the model."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgeai.data import iter_batches, num_samples
from edgeai.progress import Meter
from edgeai.steps import _onnx_graph as g

log = logging.getLogger("edgeai.steps.quantize_onnx")


def calibrate(model_in: Path, feeds: dict, batch: int, config: Any, method: Any, cache: Path, work: Path) -> None:
    """Collect activation ranges on `feeds` once and save them where quantize_static reads them."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    calibrator = create_calibrator(model_in, list(config.op_types) if config.op_types else None,
                                   augmented_model_path=str(work / "augmented.onnx"), calibrate_method=method,
                                   use_external_data_format=g.stores_external_data(model_in))
    n = num_samples(feeds)
    log.info("int8-static: calibrating %s ranges on %d sample(s) in batches of %d", config.method, n, batch)
    with Meter("int8-static calibration", -(-n // batch), log) as meter:
        calibrator.collect_data(_calibration_reader(feeds, batch, meter))
    save_tensors_data(calibrator.compute_data(), cache)


def _calibration_reader(feeds: dict, batch: int, meter: Meter):
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        """Hands onnxruntime's calibrator the samples in batches of `batch` (a call: the last batch ran)."""

        def __init__(self):
            self._batches, self._given = iter_batches(feeds, batch), 0

        def get_next(self):
            if self._given:
                meter.advance(1, self._given, f"batch {meter.done + 1}/{meter.total}")
            feed = next(self._batches, None)
            self._given = 0 if feed is None else num_samples(feed)
            return feed

    return FeedReader()
