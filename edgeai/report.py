"""Tables printed after export: every variant's size, latency, metric and parity, with ratios to FP32."""
from __future__ import annotations

from pathlib import Path

from edgeai.manifest import ArtifactEntry, Manifest


def summary_rows(manifest: Manifest) -> list[dict]:
    """One row per artifact, ratios against the first (the FP32 reference artifact)."""
    base = manifest.artifacts[0]
    rows = []
    for a in manifest.artifacts:
        row = {"variant": a.name, "format": a.format, "precision": a.precision,
               "size_mb": a.size_bytes / 1e6, "size_ratio": a.size_bytes / base.size_bytes,
               "max_abs_err": a.parity.get("max_abs"), "cosine": a.parity.get("min_cosine")}
        p50, p50_base = a.metrics.get("latency_p50_ms"), base.metrics.get("latency_p50_ms")
        if p50 is not None:
            row["p50_ms"] = p50
            row["speedup"] = p50_base / p50 if p50_base and p50 else None
        metric = _metric(a)
        if metric:
            name, value = metric
            row["metric"], row["metric_value"] = name, value
            base_metric = _metric(base)
            row["drop"] = base_metric[1] - value if base_metric and base_metric[0] == name else None
        rows.append(row)
    return rows


def _metric(a: ArtifactEntry) -> tuple[str, float] | None:
    for name in ("top1", "cosine"):
        if name in a.metrics:
            return name, float(a.metrics[name])
    return None


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def print_export_summary(manifest: Manifest, out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from edgeai.console import print_wide

    rows = summary_rows(manifest)
    table = Table(title=f"edgeai export: {out_dir}", title_justify="left")
    for col, justify in (("variant", "left"), ("format", "left"), ("size MB", "right"), ("size ×", "right"),
                         ("p50 ms", "right"), ("speedup", "right"), ("metric", "right"), ("drop", "right"),
                         ("max abs err", "right"), ("cosine", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for r in rows:
        spec = ".2f" if r.get("metric") == "top1" else ".5f"
        metric = f"{r['metric']} {r['metric_value']:{spec}}" if "metric" in r else "-"
        table.add_row(r["variant"], r["format"], f"{r['size_mb']:.3f}", f"{r['size_ratio']:.2f}",
                      _fmt(r.get("p50_ms"), ".3f"), _fmt(r.get("speedup"), ".2f"), metric,
                      _fmt(r.get("drop"), "+" + spec), _fmt(r["max_abs_err"], ".2e"), _fmt(r["cosine"], ".6f"))
    console = Console()
    print_wide(table, console)
    for a in manifest.artifacts:
        d = a.details
        if "op_count" in d:
            layout = f", input layout {d['input_layout']}" if d.get("input_layout") else ""
            console.print(f"graph {a.name}: {d['op_count']} ops, {d.get('transpose_count', 0)} TRANSPOSE{layout}",
                          markup=False, highlight=False)
        for note in a.notes:
            console.print(f"note {a.name}: {note}", style="yellow", markup=False, highlight=False)
    for f in manifest.failed:
        console.print(f"failed {f['name']}: {f['error']}", style="red", markup=False, highlight=False)
    if any("p50_ms" in r for r in rows):
        console.print("speedup = p50 of the first variant / p50 of this one, measured in this run "
                      f"({manifest.artifacts[0].metrics.get('latency_threads', '?')} thread(s)).", highlight=False)
