"""Install off this checkout: hints that work from where edgeai runs, the CPU torch route, wheels with
`python -m build`, and `edgeai device setup ssh://HOST` against the suite's sshd."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devicekit import SSH_HOST, Sshd
from test_bench import make_mlp

from edgeai import __version__
from edgeai.extras import install_command

REPO = Path(__file__).resolve().parent.parent
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a checkout on the path is not an install


def test_hints_in_a_checkout_give_the_editable_install_with_its_constraints(monkeypatch, tmp_path):
    """`pip install "edgeai[export]"` fails: edgeai is on no index. From the checkout, the editable form."""
    monkeypatch.chdir(REPO)
    assert install_command("export") == 'pip install -c constraints.txt -e ".[export]"'
    monkeypatch.chdir(tmp_path)
    assert install_command("tflite") == f'pip install -c {REPO / "constraints.txt"} -e "{REPO}[tflite]"'


def test_hints_outside_a_checkout_name_the_wheel_or_the_index(tmp_path):
    pkg = tmp_path / "site-packages" / "edgeai"
    pkg.mkdir(parents=True)
    (tmp_path / "site-packages" / "pyproject.toml").write_text('[project]\nname = "other"\n')
    # this process's edgeai (the checkout) has no direct_url.json: the index form
    assert install_command("litert", package_dir=pkg) == 'pip install "edgeai[litert]"'


def test_no_hint_in_edgeai_tells_users_to_pip_install_edgeai_from_an_index():
    offenders = []
    for path in (REPO / "edgeai").rglob("*.py"):
        if path.name == "extras.py":   # install_command's last resort, for an install from an index
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"pip install (-c constraints\.txt )?[\"']?edgeai\b", line):
                offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert offenders == []


def test_the_documented_cpu_torch_command_is_a_well_formed_pip_install(monkeypatch):
    """What is checked: the command in docs/install.md parses as pip's install with the CPU index as an
    extra index, the constraints file and the editable checkout; the pin it relies on is in
    constraints.txt, and PyTorch's CPU build (2.13.0+cpu) satisfies it. The download itself is not
    tested: download.pytorch.org is not reachable from the test machine."""
    from packaging.specifiers import SpecifierSet
    from pip._internal.commands import create_command
    text = (REPO / "docs" / "install.md").read_text()
    [line] = [ln for ln in text.splitlines() if "download.pytorch.org/whl/cpu" in ln and ln.startswith("pip ")]
    argv = shlex.split(line)
    assert argv[:2] == ["pip", "install"]
    for name in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)   # this machine's pip.conf is not part of the command
    options, args = create_command("install").parse_args(argv[2:])
    assert options.extra_index_urls == ["https://download.pytorch.org/whl/cpu"]
    assert options.index_url == "https://pypi.org/simple"     # the default index stays for everything else
    assert options.constraints == ["constraints.txt"] and options.editables == [".[export]"] and args == []
    pins = [ln for ln in (REPO / "constraints.txt").read_text().splitlines() if ln.startswith("torch==")]
    assert pins == ["torch==2.13.0"]
    assert "2.13.0+cpu" in SpecifierSet(pins[0][len("torch"):])


def _fresh_venv(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    return folder / "bin" / "python"


@pytest.mark.slow  # build, a fresh venv, numpy + onnxruntime from pip's cache: ~60 s on 2 busy cores
def test_python_m_build_makes_a_wheel_whose_plain_install_runs_without_torch(tmp_path):
    src = tmp_path / "src"  # a copy: an in-tree build leaves build/ and egg-info behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "edgeai", src / "edgeai", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True, env=CLEAN_ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [wheel] = list((tmp_path / "dist").glob("*.whl"))
    assert wheel.name == f"edgeai-{__version__}-py3-none-any.whl"
    python = _fresh_venv(tmp_path / "venv")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                           "-c", str(REPO / "constraints.txt"), str(wheel)], capture_output=True, text=True,
                          env=CLEAN_ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_documented_install_size(python)
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([str(python.parent / "edgeai"), "--version"], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert proc.stdout.strip() == f"edgeai {__version__}"
    proc = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.stdout.strip() == "None"
    proc = subprocess.run([str(python.parent / "edgeai"), "optimize", "m.py:f", "--input", "x:batch,4",
                           "--eval-data", "e.npz", "--max-drop", "1", "-o", "out"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert f'run: pip install "{wheel}[export]"' in proc.stderr   # a command that works here


def _assert_documented_install_size(python: Path) -> None:
    """docs/install.md's "about N MB" for the plain install is within 15% of `du` of this venv's site-packages."""
    [claim] = re.findall(r"plain install takes \*\*about (\d+) MB\*\*", (REPO / "docs" / "install.md").read_text())
    [site] = list((python.parent.parent / "lib").glob("python3*/site-packages"))
    kib = int(subprocess.run(["du", "-sk", str(site)], capture_output=True, text=True, check=True).stdout.split()[0])
    measured = kib / 1024
    assert abs(measured - int(claim)) <= 0.15 * measured, f"docs say about {claim} MB; du measured {measured:.0f}M"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.mark.slow  # a venv with pip, then numpy, onnxruntime and ai-edge-litert from the index: ~80 s here
def test_device_setup_installs_edgeai_with_litert_over_ssh_and_benches_there(sshd, tmp_path, capsys):
    from edgeai.cli import main
    device = f"ssh://{SSH_HOST}"
    venv = tmp_path / "board" / "venv"
    assert main(["device", "setup", device, "--python", sys.executable, "--venv", str(venv),
                 "--ssh-config", str(sshd.ssh_config), "-q"]) == 0
    out = capsys.readouterr().out
    python = venv / "bin" / "python"
    assert f"edgeai {__version__} is installed on {device} in {python}" in out
    probe = subprocess.run([str(python), "-c", "import json, edgeai, ai_edge_litert, importlib.util as u; print("
                            "json.dumps([edgeai.__version__, edgeai.__file__, u.find_spec('torch') is None]))"],
                           capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    version, where, no_torch = json.loads(probe.stdout)
    assert version == __version__ and where.startswith(str(venv)) and no_torch
    model = make_mlp(tmp_path / "m.onnx", 8)
    assert main(["bench", str(model), "--device", device, "--device-python", str(python), "--ssh-config",
                 str(sshd.ssh_config), "--runs", "5", "--warmup", "1", "--json", str(tmp_path / "b.json"), "-q"]) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["env"]["device"] == device and report["results"][0]["timing"]["n"] == 5
    assert report["env"]["versions"]["torch"] is None   # measured by the board's venv, not this process


def test_device_setup_refuses_a_wheels_folder_without_wheels(tmp_path, capsys):
    from edgeai.cli import main
    assert main(["device", "setup", f"ssh://{SSH_HOST}", "--wheels", str(tmp_path)]) == 2
    assert "is not a folder of .whl files" in capsys.readouterr().err
    assert main(["device", "setup", "adb:123"]) == 2
