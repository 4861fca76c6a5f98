"""ARM without ARM hardware: the device install resolves to aarch64 wheels, and edgeai.runtime runs under qemu-user."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import armkit
from test_bench import make_mlp, write_export_folder

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "constraints.txt"


def device_requirements(extras: tuple[str, ...] = ("litert", "llm")) -> list[str]:
    """What `pip install "edgeai[litert,llm]"` asks for, read from pyproject.toml."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(r for e in extras for r in project["optional-dependencies"][e])]


def uv_dry_run(requirements: list[str], platform: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`uv pip install --dry-run --no-build` for another platform: wheels only, markers evaluated for it."""
    try:
        import uv
        uv_bin = uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        pytest.skip("uv is not installed: pip install -c constraints.txt -e '.[dev]'")
    (tmp_path / "req.txt").write_text("\n".join(requirements) + "\n")
    return subprocess.run([uv_bin, "pip", "install", "--dry-run", "--no-build", "--target", str(tmp_path / "t"),
                           "--python-platform", platform, "--python-version", "3.11",
                           "-c", str(CONSTRAINTS), "-r", str(tmp_path / "req.txt")],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("platform", ["aarch64-manylinux_2_28", "x86_64-manylinux_2_28"])
def test_device_install_resolves_to_wheels_on_aarch64_and_x86_64_linux_cp311(tmp_path, platform):
    proc = uv_dry_run(device_requirements(), platform, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = dict(line.strip()[2:].split("==") for line in proc.stderr.splitlines() if line.strip().startswith("+ "))
    pins = dict(line.split("==") for line in CONSTRAINTS.read_text().splitlines() if "==" in line)
    for name in ("onnxruntime", "ai-edge-litert", "rich", "psutil", "tokenizers"):
        assert resolved[name] == pins[name], (name, resolved)
    assert "numpy" in resolved and "torch" not in resolved and "onnx" not in resolved


def test_the_resolution_check_fails_for_a_package_without_aarch64_wheels(tmp_path):
    """The check can fail: onnxruntime-gpu 1.31.1's aarch64 wheel needs glibc 2.34, not 2.28."""
    proc = uv_dry_run(["onnxruntime-gpu==1.31.1"], "aarch64-manylinux_2_28", tmp_path)
    assert proc.returncode != 0 and "No solution found" in proc.stderr
    assert "manylinux_2_34_aarch64" in proc.stderr


RUN_ON_ARM = textwrap.dedent("""
    import json, platform, sys
    SITE, REPO, IN, FOLDER, OUT = sys.argv[1:]
    sys.path[:0] = [SITE, REPO]
    import numpy as np
    from edgeai import runtime
    x = np.load(IN)["x"]
    outputs = {}
    for name in ("fp32", "wide"):
        session = runtime.load(FOLDER, artifact=name, threads=1)
        outputs[name] = session.run({"x": x})["y"]
    np.savez(OUT, **outputs)
    print(json.dumps({"machine": platform.machine(), "torch": "torch" in sys.modules}))
""")


@pytest.mark.slow
def test_edgeai_runtime_on_aarch64_under_qemu_matches_x86_outputs(tmp_path, request):
    import onnxruntime as ort
    # pytest's cache keeps the downloaded sysroot between runs; without the cache plugin, a temp folder
    cache = (Path(request.config.cache.mkdir("edgeai-aarch64")) if getattr(request.config, "cache", None)
             else tmp_path / "aarch64")
    try:
        python, site = armkit.build(cache, ["numpy", "onnxruntime"], CONSTRAINTS)
    except armkit.Unavailable as e:
        pytest.skip(str(e))
    folder = write_export_folder(tmp_path / "export", (make_mlp(tmp_path / "a.onnx", 32),
                                                       make_mlp(tmp_path / "b.onnx", 256, seed=1)))
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    args = [str(a) for a in (site, REPO, tmp_path / "in.npz", folder, tmp_path / "out.npz")]
    proc = subprocess.run([*python, "-c", RUN_ON_ARM, *args], capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info == {"machine": "aarch64", "torch": False}
    with np.load(tmp_path / "out.npz") as arm:
        for name in ("fp32", "wide"):
            expected = ort.InferenceSession(str(folder / f"{name}.onnx")).run(None, {"x": x})[0]
            np.testing.assert_allclose(arm[name], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
