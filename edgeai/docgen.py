"""Reference pages generated from the code itself: the CLI from argparse, recipes and step options from dataclasses.

The docs site (mkdocs, `docs/hooks.py`) replaces `{{ cli_reference }}` and `{{ recipe_reference }}`
with these, so the reference can never drift from the parser and the configs. No torch import:
step modules keep their heavy imports inside their handlers.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing
from typing import Any

_FIELD = re.compile(r"^\s*(\w+)\s*:\s*[^#]*?(?:#\s*(.*))?$")


def field_comments(cls: type) -> dict[str, str]:
    """{field: its trailing `# comment`} read from the dataclass's source (the comments are its docs)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for line in source.splitlines():
        m = _FIELD.match(line)
        if m and m.group(1) in names and m.group(2) and m.group(1) not in out:
            out[m.group(1)] = m.group(2).strip()
    return out


def _type_name(tp: Any) -> str:
    """`str | None`, `list[str]`, `mapping` for a resolved annotation."""
    if isinstance(tp, str):
        return tp
    if tp is type(None):
        return "None"
    origin, args = typing.get_origin(tp), [a for a in typing.get_args(tp) if a is not Ellipsis]
    if origin is None:
        return getattr(tp, "__name__", str(tp))
    if origin is typing.Union or getattr(origin, "__name__", "") == "UnionType":
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list[{_type_name(args[0])}]" if args else "list"
    if getattr(origin, "__name__", "") in ("Mapping", "dict"):
        return "mapping"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    return getattr(origin, "__name__", str(origin))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
        if dataclasses.is_dataclass(value):
            return "see below"
        return f"`{value!r}`" if value not in ("", ()) else ("`\"\"`" if value == "" else "`[]`")
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return f"`{value!r}`" if value else "`{}`" if isinstance(value, dict) else "`[]`"
    return "required"


def dataclass_table(cls: type) -> str:
    """A Markdown table of a config dataclass: field, type, default, what it does."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        rows.append(f"| `{f.name}` | {_cell(_type_name(hints.get(f.name, f.type)))} | {_cell(_default(f))} | "
                    f"{_cell(comments.get(f.name, ''))} |")
    return "\n".join(rows)


def recipe_reference() -> str:
    """Every recipe key, then the options of every registered exporter, model step and artifact step."""
    from edgeai.exporters import EXPORTERS
    from edgeai.recipe import DataConfig, Recipe, SummaryConfig
    from edgeai.steps import ARTIFACT_STEPS, MODEL_STEPS

    parts = ["## Recipe keys", "", dataclass_table(Recipe), "", "### `data:`", "", dataclass_table(DataConfig), "",
             "### `summary:`", "", dataclass_table(SummaryConfig), "", "## `export:` options per format", ""]
    EXPORTERS.discover()
    for name in EXPORTERS.names():
        exporter = EXPORTERS.get(name)
        parts += [f"### `format: {name}`", "", _doc(exporter.config_cls), dataclass_table(exporter.config_cls), ""]
    MODEL_STEPS.discover()
    parts += ["## `steps:` (model steps, torch in / torch out)", ""]
    for name in MODEL_STEPS.names():
        cls = MODEL_STEPS.get(name).config_cls
        parts += [f"### `{name}`", "", _doc(cls), dataclass_table(cls), ""]
    ARTIFACT_STEPS.discover()
    parts += ["## `quantize:` (artifact steps, file in / file out)", "",
              "Keyed by format; a scheme is written `NAME` or `{NAME: {option: value}}`.", ""]
    for name in ARTIFACT_STEPS.names():
        cls = ARTIFACT_STEPS.get(name).config_cls
        parts += [f"### `{name}`", "", _doc(cls), dataclass_table(cls), ""]
    return "\n".join(parts)


def _doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    if doc.startswith(f"{cls.__name__}("):  # dataclass's generated signature is not documentation
        return ""
    return doc.split("\n\n")[0].replace("\n", " ") + "\n\n" if doc else ""


def cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """Every command's usage, description and options, from the real parser."""
    if parser is None:
        from edgeai.cli import build_parser
        parser = build_parser()
    parts = [_command_section("edgeai", parser, level=2)]
    for action in parser._actions:  # the subcommands, in the order `edgeai --help` lists them
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                parts.append(_command_section(f"edgeai {name}", sub, level=2))
                for sub_action in sub._actions:
                    if isinstance(sub_action, argparse._SubParsersAction):
                        for name2, sub2 in sub_action.choices.items():
                            parts.append(_command_section(f"edgeai {name} {name2}", sub2, level=3))
    return "\n\n".join(parts)


def _command_section(title: str, parser: argparse.ArgumentParser, level: int) -> str:
    usage = parser.format_usage().removeprefix("usage: ").strip()
    lines = [f"{'#' * level} `{title}`", "", "```text", usage, "```", ""]
    if parser.description:
        lines += ["```text", parser.description.strip(), "```", ""]
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        flags = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
        metavar = action.metavar if isinstance(action.metavar, str) else ""
        if action.option_strings and action.nargs != 0 and not metavar:
            metavar = action.dest.upper()
        helptext = (action.help or "") % {"default": action.default, "prog": parser.prog} if action.help else ""
        if action.choices and not isinstance(action.choices, dict):
            helptext += f" (choices: {', '.join(map(str, action.choices))})"
        value = f"`{metavar}`" if metavar else ""
        rows.append(f"| {flags} | {value} | {_cell(helptext)} |")
    if rows:
        lines += ["| option | value | meaning |", "|---|---|---|", *rows, ""]
    if parser.epilog:
        lines += ["```text", parser.epilog.strip(), "```"]
    return "\n".join(lines)
