"""One name per concept on every command: deprecated spellings, FOLDER@ARTIFACT and --quantize-option (stdlib only).

docs/cli-vocabulary.md is the table; an old spelling still works for one release and says, once
per run, which name replaces it.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Mapping

from edgeai.errors import ConfigError

_warned: set[str] = set()


def warn_deprecated(old: str, new: str) -> None:
    """One line on stderr (CLI) or a FutureWarning (Python), once per spelling and process."""
    if old in _warned:
        return
    _warned.add(old)
    message = f"{old} is deprecated and goes in the next release; use {new}"
    if old.startswith("-"):
        print(f"edgeai: warning: {message}", file=sys.stderr)
    else:
        warnings.warn(message, FutureWarning, stacklevel=3)


def add_deprecated_alias(parser, old: str, new: str, dest: str, append: bool = False, type=None) -> None:
    """`old` sets `dest` like `new` does, warns, and is left out of --help."""

    class Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            warn_deprecated(old, new)
            if append:
                values = [*(getattr(namespace, self.dest, None) or []), values]
            setattr(namespace, self.dest, values)

    parser.add_argument(old, dest=dest, action=Deprecated, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                        type=type)


def renamed_keywords(options: dict[str, Any], renames: Mapping[str, str]) -> dict[str, Any]:
    """Python keywords: an old name is moved to its new one (with a FutureWarning); both is an error."""
    for old, new in renames.items():
        if old in options:
            if new in options:
                raise ConfigError(f"{old}= and {new}= are the same option; pass {new}= only")
            warn_deprecated(f"{old}=", f"{new}=")
            options[new] = options.pop(old)
    return options


def split_artifact(target: str, name: str | None = None) -> tuple[str, str | None]:
    """`FOLDER@ARTIFACT` -> (FOLDER, ARTIFACT); a plain path -> (path, `name`). One artifact, one way."""
    folder, at, artifact = target.rpartition("@")
    if at and folder and Path(folder).is_dir():
        if name is not None and name != artifact:
            raise ConfigError(f"{target!r} names artifact {artifact!r} and --artifact-name names {name!r}; "
                              f"write {folder}@NAME only")
        return folder, artifact
    return target, name


def split_artifacts(target: str, names: list[str] | None) -> tuple[str, list[str] | None]:
    """Like split_artifact for commands that take several artifacts (eval: `--artifact-name` repeated):
    (FOLDER, [ARTIFACT]) or (path, names); `FOLDER@A` with `--artifact-name B` is refused."""
    folder, picked = split_artifact(target)
    if picked is not None:
        for name in names or ():
            split_artifact(target, name)    # raises when it names another artifact
        return folder, [picked]
    return folder, list(names) if names else None


def parse_scheme_option(text: str) -> tuple[str, str, str]:
    """`SCHEME.KEY=VALUE` -> (scheme, key, raw value)."""
    head, eq, value = text.partition("=")
    scheme, dot, key = head.rpartition(".")
    if not (eq and dot and scheme and key.isidentifier()):
        raise ConfigError(f"bad --quantize-option {text!r}: expected SCHEME.KEY=VALUE, e.g. "
                          "int8-dynamic.op_types=MatMul,Gemm,Conv or int8-static.per_channel=false")
    return scheme, key, value


def typed_option(config_cls: type, key: str, raw: str, what: str) -> Any:
    """`raw` converted to the type of `config_cls.key` (judged by its default): bool, int, float, a
    comma list for tuples, else str; unknown keys list the known ones."""
    by_name = {f.name: f for f in fields(config_cls)}
    if key not in by_name:
        raise ConfigError(f"{what} has no option {key!r}; known: {', '.join(by_name)}")
    f = by_name[key]
    default = f.default if f.default is not MISSING else None
    kind = type(default) if default is not None else None
    annotation = str(f.type)
    try:
        if kind is bool or annotation.startswith("bool"):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if kind is tuple or annotation.startswith("tuple"):
            return tuple(v.strip() for v in raw.split(",") if v.strip())
        if kind is int or annotation.startswith("int"):
            return int(raw)
        if kind is float or annotation.startswith("float"):
            return float(raw)
    except ValueError:
        expected = "true or false" if (kind is bool or annotation.startswith("bool")) else annotation
        raise ConfigError(f"{what}: option {key} takes {expected}, got {raw!r}") from None
    if raw.lower() in ("none", "null") and "None" in annotation:
        return None
    return raw


def with_scheme_options(quantize: tuple, options: list[str], fmt: str) -> tuple[dict, ...]:
    """--quantize-option SCHEME.KEY=VALUE written into the --quantize entries, each value typed and checked
    against the scheme's config for this format."""
    from edgeai.steps import ARTIFACT_STEPS, canonical_scheme

    entries = [dict(item) for item in quantize]
    names = [canonical_scheme(next(iter(e))) for e in entries]
    for text in options:
        scheme, key, raw = parse_scheme_option(text)
        if canonical_scheme(scheme) not in names:
            raise ConfigError(f"--quantize-option {text!r}: {scheme!r} is not among the schemes asked for "
                              f"({', '.join(names) or 'none'}); add --quantize {scheme}")
        i = names.index(canonical_scheme(scheme))
        step_key = f"{fmt}:{names[i]}"
        if step_key not in ARTIFACT_STEPS:
            ARTIFACT_STEPS.discover()
        if step_key not in ARTIFACT_STEPS:   # the recipe check names the known schemes
            raise ConfigError(f"no quantization scheme {scheme!r} for format {fmt}")
        config_cls = ARTIFACT_STEPS.get(step_key).config_cls
        (name, opts), = entries[i].items()
        entries[i] = {name: {**dict(opts or {}), key: typed_option(config_cls, key, raw, f"{fmt} {names[i]}")}}
    return tuple(entries)
