"""The docs site builds with --strict, and every shell snippet in it runs (or says why it cannot).

A fenced ```bash block in docs/ or README.md is executed, page by page, in a fresh folder holding a
copy of recipes/ (blocks of one page share that folder, in order, so a page can write model.py and
use it below). An HTML comment on the line before a block marks it:
`<!-- docs-test: skip (REASON) -->` for hardware, network or installs, `<!-- docs-test: slow (...) -->`
for blocks that run only under `pytest -m slow`.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(?:<!--\s*docs-test:\s*(skip|slow)\b(.*?)-->\s*\n)?```(bash|sh|shell|console)\n(.*?)```", re.S)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(page: Path) -> list[tuple[str, str, str]]:
    """(mark, reason, code) of every shell block; mark is 'run', 'skip' or 'slow'."""
    return [(m.group(1) or "run", (m.group(2) or "").strip(" ()"), m.group(4))
            for m in BLOCK.finditer(page.read_text(encoding="utf-8"))]


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _run_page(page: Path, marks: set[str], tmp_path: Path) -> None:
    code = [c for mark, _, c in blocks(page) if mark in marks]
    if not code:
        pytest.skip(f"{_page_id(page)} has no {'/'.join(sorted(marks))} shell blocks")
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    script = "set -euo pipefail\n" + "\n".join(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "COLUMNS": "100"}
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, (f"{_page_id(page)}: a shell snippet failed (exit {proc.returncode})\n"
                                  f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")


@pytest.mark.parametrize("page", pages(), ids=_page_id)
def test_docs_shell_snippets_run(page, tmp_path):
    _run_page(page, {"run"}, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("page", pages(), ids=_page_id)
def test_docs_slow_shell_snippets_run(page, tmp_path):
    _run_page(page, {"run", "slow"}, tmp_path)


def test_every_skipped_snippet_says_why():
    for page in pages():
        for mark, reason, code in blocks(page):
            assert mark != "skip" or reason, f"{_page_id(page)}: a skipped block gives no reason:\n{code[:200]}"


def test_readme_is_short_and_every_link_reaches_a_page():
    """The README says what edgeai is, the commands and the quickstart, and links into docs/ (the site
    build checks docs/ links; the README is outside it)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local and all((ROOT / link).is_file() for link in local), [x for x in local if not (ROOT / x).is_file()]
    for page in ("quickstart", "install", "troubleshooting", "security", "benchmarks", "devices"):
        assert f"docs/{page}.md" in local, page


def test_hf_page_numbers_are_the_committed_benchmark():
    """The Hugging Face page's int8-dynamic size and cosines are benchmarks/results/hf_parity.json's (they
    were stale once: the page said 0.79x while its own benchmark said 0.26x)."""
    import json
    import math
    rows = {r["variant"]: r for r in json.loads((ROOT / "benchmarks/results/hf_parity.json").read_text())["rows"]}
    fp32, q = rows["fp32"], rows["int8-dynamic"]
    text = " ".join((ROOT / "docs/howto/huggingface.md").read_text(encoding="utf-8").split())
    m = re.search(r"is ([\d.]+)x the size \(([\d.]+) -> ([\d.]+) MB\) at cosine >= ([\d.]+) per token and "
                  r">= ([\d.]+) per mean-pooled sentence", text)
    assert m, "the int8-dynamic sentence of docs/howto/huggingface.md changed shape"
    ratio, before, after, token, sentence = map(float, m.groups())
    assert (before, after) == (round(fp32["size_mb"], 2), round(q["size_mb"], 2))
    assert ratio == round(q["size_mb"] / fp32["size_mb"], 2)
    floor5 = [math.floor(q[k] * 1e5) / 1e5 for k in ("token_cos_min", "sentence_cos_min")]   # ">=" bounds
    assert [token, sentence] == floor5


def test_benchmarks_page_lists_every_result_with_its_date_and_machine():
    """docs/benchmarks.md's table of runs is benchmarks/results/*.json's dates and machines (a new result
    file fails here until its row, given in the message, is added)."""
    import json
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    listed = [line for line in text.splitlines() if re.match(r"\| `\w+\.md` \|", line)]
    expected = []
    for f in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        doc = json.loads(f.read_text())
        cpu, versions = doc["env"]["cpu"], doc["env"]["versions"]
        vnni = "yes" if any("vnni" in flag for flag in cpu.get("flags", [])) else "no"
        expected.append(f"| `{f.stem}.md` | {doc['created'][:10]} | {cpu['model']}, {cpu['machine']} | {vnni} | "
                        f"{versions['onnxruntime']} |")
    assert listed == expected, "docs/benchmarks.md's table of runs should read:\n" + "\n".join(expected)


def test_docs_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    for command in ("edgeai export", "edgeai bench", "edgeai optimize", "edgeai eval", "--budget-minutes"):
        assert command in cli, f"the generated CLI reference lacks {command!r}"
    recipes = (tmp_path / "site" / "reference" / "recipes" / "index.html").read_text()
    for key in ("trust_pickle", "max_drop", "int8-static", "distill"):
        assert key in recipes, f"the generated recipe reference lacks {key!r}"


def test_generated_cli_reference_lists_every_command_and_option():
    from edgeai.cli import build_parser
    from edgeai.docgen import cli_reference
    parser = build_parser()
    text = cli_reference(parser)
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, command in sub.choices.items():
        assert f"`edgeai {name}`" in text
        for action in command._actions:
            for flag in action.option_strings:
                if action.help != "==SUPPRESS==":
                    assert f"`{flag}`" in text, f"edgeai {name} {flag} missing from the CLI reference"


@pytest.mark.slow  # a fresh venv with the export extra (torch from pip's local copy): several minutes
def test_quickstart_walks_through_in_a_fresh_venv(tmp_path):
    """docs/quickstart.md as a newcomer runs it: a new venv, the documented install from this checkout,
    then every shell block of the page (its model is defined on the page, not taken from the zoo)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"),
                           "-e", f"{ROOT}[export]"], capture_output=True, text=True, env=clean, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    code = [c for mark, _, c in blocks(ROOT / "docs" / "quickstart.md") if mark != "skip"]
    assert any("edgeai export model.py:make_model" in c for c in code)
    env = {**clean, "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}", "VIRTUAL_ENV": str(venv)}
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + "\n".join(code)], cwd=work, capture_output=True,
                          text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "out" / "tiny" / "manifest.json").is_file() and (work / "out" / "tiny-opt" / "report.html").is_file()
    which = subprocess.run(["bash", "-c", "command -v edgeai"], env=env, capture_output=True, text=True).stdout
    assert which.strip() == str(venv / "bin" / "edgeai")
