"""Import a user's `file.py:name` or `package.module:name` (stdlib only), with errors in the caller's terms."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from edgeai.errors import EdgeAIError


def _working_folder_on_path() -> None:
    """Let `package.module:name` name a package in the working folder, as `python -m` does, without a
    PYTHONPATH=. the user would have to know about. Appended, not prepended: a file in the working
    folder never shadows an installed package (a local yaml.py stays out of the way of PyYAML)."""
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def import_callable(spec: str, what: str, error: type[EdgeAIError]) -> Callable:
    """The callable `name` of `file.py:name` or `package.module:name`; `error` for every failure."""
    target, _, name = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            file = Path(target)
            if not file.is_file():
                raise error(f"{what} file {target!r} does not exist")
            mod_name = f"_edgeai_user_{abs(hash(str(file.resolve())))}"
            module = sys.modules.get(mod_name)
            if module is None:  # a file is executed once per process, like an import
                mod_spec = importlib.util.spec_from_file_location(mod_name, file)
                module = importlib.util.module_from_spec(mod_spec)
                sys.modules[mod_name] = module
                try:
                    mod_spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[mod_name]
                    raise
        else:
            _working_folder_on_path()
            module = importlib.import_module(target)
    except EdgeAIError:
        raise
    except ModuleNotFoundError as e:
        raise error(f"cannot import {target!r} for {what} {spec!r}: {e}") from None
    except Exception as e:
        raise error(f"importing {target!r} for {what} {spec!r} raised {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise error(f"{what} {spec!r}: {target!r} has no callable {name!r}")
    return fn
