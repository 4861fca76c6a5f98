"""The Session interface every on-device runtime implements (numpy in, numpy out)."""
from __future__ import annotations

import abc
from typing import Mapping, Sequence

import numpy as np

from edgeai.registry import Registry
from edgeai.specs import TensorSpec, check_feeds


class Session(abc.ABC):
    """A loaded model: named inputs and outputs, and `run(feeds) -> {name: array}`."""

    format: str = ""
    # True where a bad model can kill the whole process (LiteRT aborts): run it in a child process
    crash_prone: bool = False
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    provider: str = "cpu"
    threads: int | None = None

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check names and shapes against the model's specs and cast dtypes (once, outside timed loops)."""
        check_feeds(self.inputs, feeds)
        return {s.name: np.ascontiguousarray(feeds[s.name], dtype=s.dtype) for s in self.inputs}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check and cast the feeds, then run."""
        return self.run_unchecked(self.prepare(feeds))

    def run_many(self, feed_sets: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """`run` on each feed set in turn (an isolated session runs them all in one child process)."""
        return [self.run(feeds) for feeds in feed_sets]

    @abc.abstractmethod
    def run_unchecked(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run with feeds already of the right names, dtypes and shapes (the timed path)."""

    def describe(self) -> dict:
        return {"format": self.format, "provider": self.provider, "threads": self.threads}

    @classmethod
    def read_specs(cls, path) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """(inputs, outputs) of the model file; crash-prone runtimes read them without running it."""
        session = cls(path)
        return session.inputs, session.outputs


# format -> Session class; each runtime file registers its class with @RUNTIMES.register("fmt")
RUNTIMES: Registry[type[Session]] = Registry("runtime", package="edgeai.runtime")
