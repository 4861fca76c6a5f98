"""Render a BenchReport for people: the environment line, one table row per target, failures below."""
from __future__ import annotations

from typing import TYPE_CHECKING

from edgeai.bench.results import BenchReport, BenchResult

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

MB = 1e6  # sizes and memory are shown in MB = 10^6 bytes


from edgeai.console import fmt_ms as ms  # noqa: E402  (one latency format for every table)

# columns given up first when the table is wider than the terminal (--wide shows them all)
BENCH_DROP = ("mean±std ms", "p99 ms", "first ms", "n", "load ms", "size MB", "peak RSS MB", "runtime")


def megabytes(n: int | None) -> str:
    return "-" if n is None else f"{n / MB:.2f}"


def speedup_header(report: BenchReport) -> str:
    index = next((i for i, r in enumerate(report.results, 1) if r.target == report.baseline), None)
    return f"speedup vs #{index}" if index else "speedup"


def environment_line(report: BenchReport) -> str:
    env, cfg = report.env, report.config
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    flags = " ".join(env["cpu"]["flags"]) or "no SIMD flags reported"
    device = env.get("device", "local")
    where = "" if device == "local" else f"device {device}: "
    return (f"{where}{env['cpu']['model']} ({flags}); {env['logical_cores']} logical / {env['physical_cores']} "
            f"physical cores; {env['os']['system']} {env['os']['release']}; Python {env['python']}; "
            f"{versions}\nthreads {cfg.threads}, provider {cfg.provider}, warmup {cfg.warmup}, "
            f"timed runs: {cfg.stop_rule.describe()}, "
            f"{'each target in a fresh process' if cfg.isolate else 'all targets in this process'}")


def _row(i: int, r: BenchResult) -> list[str]:
    from rich.markup import escape
    head = [str(i), escape(r.target), r.runtime or r.format, megabytes(r.size_bytes)]
    if not r.ok:
        status = f"FAILED ({r.signal})" if r.signal else "FAILED"
        return head + [ms(r.load_ms), ms(r.first_ms), f"[red]{status}[/red]"] + ["-"] * 6
    t = r.timing
    return head + [ms(r.load_ms), ms(r.first_ms), ms(t.p50_ms), ms(t.p90_ms), ms(t.p99_ms),
                   f"{ms(t.mean_ms)}±{ms(t.std_ms)}", str(t.n), megabytes(r.peak_rss_bytes),
                   "-" if r.speedup_vs_baseline is None else f"{r.speedup_vs_baseline:.2f}x"]


def table(report: BenchReport) -> "Table":
    """Numbers never wrap or truncate (each column is as wide as its widest cell); names fold."""
    from rich import box
    from rich.table import Table
    t = Table(title="edgeai bench (times in ms, sizes in MB)", caption=_caption(report),
              box=box.SIMPLE_HEAD, pad_edge=False)
    rows = [_row(i, r) for i, r in enumerate(report.results, 1)]
    headers = ["#", "target", "runtime", "size\nMB", "load\nms", "first\nms", "p50\nms", "p90\nms",
               "p99\nms", "mean±std\nms", "n", "peak\nRSS MB", speedup_header(report).replace(" vs", "\nvs")]
    for col, header in enumerate(headers):
        width = max(len(line) for cell in [header, *(row[col] for row in rows)] for line in cell.split("\n"))
        if header in ("target", "runtime"):
            t.add_column(header, overflow="fold", min_width=min(width, 40))
        else:
            t.add_column(header, justify="right", no_wrap=True, min_width=width)
    for row in rows:
        t.add_row(*row)
    return t


def _caption(report: BenchReport) -> str:
    if report.baseline is None:
        return "no target was measured"
    return (f"{speedup_header(report)} = p50 of {report.baseline} / p50 of the row (> 1: faster). "
            "first = first inference after load (cold).")


def print_report(report: BenchReport, console: "Console | None" = None) -> None:
    from rich.console import Console

    from edgeai.console import print_table
    console = console or Console()
    console.print(environment_line(report), highlight=False)
    print_table(table(report), console, drop=BENCH_DROP, fold=("target",))
    notes: dict[str, list[str]] = {}
    for i, r in enumerate(report.results, 1):
        for note in r.notes:
            notes.setdefault(note, []).append(f"#{i}")
    shapes: dict[str, list[str]] = {}  # the input shapes each target was timed at
    for i, r in enumerate(report.results, 1):
        if r.inputs:
            text = ", ".join(f"{d['name']} {'x'.join(map(str, d['shape'])) or 'scalar'} {d['dtype']}" for d in r.inputs)
            shapes.setdefault(text, []).append(f"#{i}")
    for text, rows in shapes.items():
        console.print(f"inputs ({', '.join(rows)}): {text}", highlight=False, markup=False)
    for note, rows in notes.items():
        console.print(f"note ({', '.join(rows)}): {note}", highlight=False, markup=False)
    from edgeai.bench.decoder import decoder_lines
    for line in decoder_lines(enumerate(report.results, 1)):
        console.print(line, highlight=False, markup=False)
    failures: dict[tuple, list[str]] = {}  # one line per distinct error, naming every target it hit
    for i, r in enumerate(report.results, 1):
        if not r.ok:
            failures.setdefault((r.error, r.stderr_tail), []).append(f"#{i} {r.target}")
    for (error, stderr_tail), rows in failures.items():
        console.print(f"{', '.join(rows)} failed: {error}", style="red", highlight=False, markup=False)
        if stderr_tail:
            console.print(f"   last stderr line: {stderr_tail.splitlines()[-1]}", highlight=False, markup=False)
