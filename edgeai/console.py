"""Printing tables for people: never let rich drop or squeeze columns on a narrow console."""
from __future__ import annotations

from typing import Any


def print_wide(renderable: Any, console: Any = None) -> None:
    """Print `renderable` (a rich Table) at its natural width, even past the console's width."""
    from rich.console import Console
    from rich.measure import Measurement
    console = console or Console()
    needed = Measurement.get(console, console.options.update_width(10_000), renderable).maximum
    width = console.width
    console.width = max(width, needed)
    try:
        console.print(renderable)
    finally:
        console.width = width
