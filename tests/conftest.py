"""Shared fixtures: paths to the tiny test models and a CLI runner that captures output."""
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
MODELS = TESTS / "models.py"

os.environ.setdefault("OMP_NUM_THREADS", "1")
# the zoo's trained weights, shared by this run's processes (subprocesses inherit it) and by no other run
if "EDGEAI_ZOO_CACHE" not in os.environ:
    _ZOO_CACHE = tempfile.mkdtemp(prefix="edgeai-test-zoo-")
    os.environ["EDGEAI_ZOO_CACHE"] = _ZOO_CACHE
    atexit.register(shutil.rmtree, _ZOO_CACHE, True)


def factory(name: str) -> str:
    return f"{MODELS}:{name}"


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass


@pytest.fixture
def cli(capsys):
    """Run `edgeai ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from edgeai.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


sys.path.insert(0, str(TESTS))
