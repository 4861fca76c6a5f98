"""Which pip extra brings which module, and the install command that works from where edgeai is (stdlib only)."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from edgeai.errors import MissingDependencyError

# top-level module -> the extra of `pip install "edgeai[EXTRA]"` that installs it
EXTRA_OF_MODULE = {
    "torch": "export", "onnx": "export", "onnxscript": "export", "torch_pruning": "export",
    "sklearn": "export", "yaml": "export",
    "litert_torch": "tflite", "ai_edge_quantizer": "tflite",
    "ai_edge_litert": "litert",
    "transformers": "hf", "optimum": "hf", "tokenizers": "hf",
    "ray": "ray", "cloudpickle": "export",
}
PACKAGE_DIR = Path(__file__).resolve().parent


def checkout_root(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The source checkout edgeai runs from (a folder whose pyproject.toml names edgeai), else None."""
    root = package_dir.parent
    try:
        text = (root / "pyproject.toml").read_text()
    except OSError:
        return None
    return root if re.search(r'(?m)^name\s*=\s*"edgeai"\s*$', text) else None


def installed_wheel() -> Path | None:
    """The wheel file edgeai was installed from, when pip recorded it (PEP 610) and it still exists."""
    from importlib import metadata
    try:
        text = metadata.distribution("edgeai").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    try:
        url = json.loads(text or "{}").get("url", "")
    except ValueError:
        return None
    if url.startswith("file://") and url.endswith(".whl"):
        path = Path(url[len("file://"):])
        return path if path.is_file() else None
    return None


def install_command(extra: str, package_dir: Path = PACKAGE_DIR) -> str:
    """The pip command that adds `extra` to this edgeai: the editable checkout with its torch pins,
    the wheel it was installed from, else the package index."""
    root = checkout_root(package_dir)
    if root is not None:
        here = Path.cwd().resolve() == root
        constraints = "constraints.txt" if here else str(root / "constraints.txt")
        target = "." if here else str(root)
        return f'pip install -c {constraints} -e "{target}[{extra}]"'
    wheel = installed_wheel()
    if wheel is not None:
        return f'pip install "{wheel}[{extra}]"'
    return f'pip install "edgeai[{extra}]"'


def require(module: str, what: str) -> None:
    """Raise a one-line MissingDependencyError naming the extra unless `module` can be imported
    (checked with find_spec: nothing is imported)."""
    if importlib.util.find_spec(module) is None:
        extra = EXTRA_OF_MODULE[module]
        raise MissingDependencyError(f"{what} needs the '{extra}' extra ({module} is not installed); "
                                     f"run: {install_command(extra)}")

