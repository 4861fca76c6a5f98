"""mkdocs hook: fills the generated reference pages from the code (edgeai.docgen), so they never drift."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's edgeai

MARKERS = {
    "{{ cli_reference }}": "cli_reference",
    "{{ recipe_reference }}": "recipe_reference",
}


def on_page_markdown(markdown, page, config, files):
    from edgeai import docgen
    for marker, function in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, getattr(docgen, function)())
    return markdown
