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
        if "macs" in a.metrics:
            row["macs_m"] = a.metrics["macs"] / 1e6
            row["macs_ratio"] = a.metrics["macs"] / base.metrics["macs"] if base.metrics.get("macs") else None
        rows.append(row)
    return rows


def model_step_lines(manifest: Manifest) -> list[str]:
    """One line per model step (prune, distill, ...) of the artifact after them, from its details."""
    after = next((a for a in manifest.artifacts if any(s["type"].startswith("model.") for s in a.steps)), None)
    lines = []
    for s in after.steps if after else []:
        if not s["type"].startswith("model."):  # export and artifact steps have their own rows
            continue
        d = s.get("details", {})
        try:
            lines.append(_step_line(s["type"], d))
        except (KeyError, TypeError):  # a step without the usual numbers: show what it has
            lines.append(f"{s['type'][6:]}: " + ", ".join(f"{k}={v}" for k, v in d.items()
                                                         if not isinstance(v, (list, dict))))
        lines += [f"note {s['type'][6:]}: {n}" for n in s.get("notes") or []]
    return lines


def _step_line(kind: str, d: dict) -> str:
    if kind == "model.prune":
        return (f"prune: MACs {d['macs_before'] / 1e6:.2f}M -> {d['macs_after'] / 1e6:.2f}M "
                f"(asked {d['target_ratio']}, removed {d['achieved_ratio']:.3f}), params "
                f"{d['params_before']:,} -> {d['params_after']:,} (example batch)")
    if kind == "model.distill":
        scale = 100.0 if d.get("metric") == "top1" else 1.0
        return (f"distill: {d['metric']} {d['initial_metric'] * scale:.2f} -> {d['best_metric'] * scale:.2f} "
                f"in {d['epochs_run']} epochs ({d['seconds']:.0f} s); teacher "
                f"{d['teacher_metric'] * scale:.2f} (PyTorch, evaluation data)")
    raise KeyError(kind)


def _metric(a: ArtifactEntry) -> tuple[str, float] | None:
    for name in (a.metrics.get("metric_name"), "top1", "cosine"):
        if name in a.metrics:
            return name, float(a.metrics[name])
    return None


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


# columns given up first when the table is wider than the terminal (--wide shows them all)
EXPORT_DROP = ("max abs err", "MMACs", "format", "size MB", "drop")


def print_export_summary(manifest: Manifest, out_dir: Path, title: str = "edgeai export") -> None:
    from rich.console import Console
    from rich.table import Table

    from edgeai.console import fmt_ms, print_table

    rows = summary_rows(manifest)
    table = Table(title=f"{title}: {out_dir}", title_justify="left")
    macs = any("macs_m" in r for r in rows)
    for col, justify in (("variant", "left"), ("format", "left"), *((("MMACs", "right"),) if macs else ()),
                         ("size MB", "right"), ("size ×", "right"),
                         ("p50 ms", "right"), ("speedup", "right"), ("metric", "right"), ("drop", "right"),
                         ("max abs err", "right"), ("cosine", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for r in rows:
        spec = ".2f" if r.get("metric") == "top1" else ".5f"
        metric = f"{r['metric']} {r['metric_value']:{spec}}" if "metric" in r else "-"
        table.add_row(r["variant"], r["format"], *((_fmt(r.get("macs_m"), ".2f"),) if macs else ()),
                      f"{r['size_mb']:.3f}", f"{r['size_ratio']:.2f}",
                      fmt_ms(r.get("p50_ms")), _fmt(r.get("speedup"), ".2f"), metric,
                      _fmt(r.get("drop"), "+" + spec), _fmt(r["max_abs_err"], ".2e"), _fmt(r["cosine"], ".6f"))
    console = Console()
    print_table(table, console, drop=EXPORT_DROP, fold=("variant",))
    for line in model_step_lines(manifest):
        console.print(line, markup=False, highlight=False)
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
