"""pareto.png: every candidate on metric vs latency, the frontier, the budget band, the choice; labels that do not overlap."""
from __future__ import annotations

import io
import math

GREY = "#9e9e9e"
COLORS = {"chosen": "#2e7d32", "ok": "#1565c0", "rejected": GREY, "failed": GREY, "skipped": GREY}
LABEL_OFFSETS = [(6, 6), (6, -12), (-6, 6), (-6, -12), (6, 18), (-6, 18), (6, -24), (-6, -24), (14, 0), (-14, 0)]


def frontier(points: list[dict]) -> list[dict]:
    """The Pareto frontier of timed candidates within the budget: no other is both faster and more accurate."""
    best, out = -math.inf, []
    for c in sorted(points, key=lambda c: (c["p50_ms"], -c["value"])):
        if c["value"] > best:
            out.append(c)
            best = c["value"]
    return out


def pareto_png(report: dict) -> bytes:
    """The plot as PNG bytes (matplotlib, Agg backend)."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(report)
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def pareto_figure(report: dict):
    """The matplotlib Figure pareto_png saves (the caller closes it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, cands = report["baseline"], report["candidates"]
    scored = [c for c in cands if c["value"] is not None]
    timed = [c for c in scored if c["p50_ms"] is not None]
    untimed = [c for c in scored if c["p50_ms"] is None]
    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    max_size = max((c["size_bytes"] or 0) for c in scored) or 1

    def area(c: dict) -> float:  # marker area grows with the file size
        return 40 + 360 * math.sqrt((c["size_bytes"] or 0) / max_size)

    xmax = max((c["p50_ms"] for c in timed), default=1.0)
    x_untimed = xmax * 1.25  # a column at the right for candidates rejected before timing
    floor = base["value"] - report["max_drop"] if base["value"] is not None else None
    values = [c["value"] for c in scored] + ([floor] if floor is not None else [])
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (hi - lo) * 0.15 or abs(hi) * 0.01 or 0.01
    ax.set_ylim(lo - pad, hi + pad)
    if floor is not None:
        ax.axhspan(lo - pad * 2, floor, color="#ffcdd2", alpha=0.5, zorder=0,
                   label=f"outside the budget (drop > {report['max_drop']:g})")
        ax.axhline(floor, color="#c62828", lw=0.8, ls="--", zorder=1)
    front = frontier([c for c in timed if c["status"] in ("ok", "chosen")])
    if len(front) > 1:
        ax.step([c["p50_ms"] for c in front], [c["value"] for c in front], where="post", color="#1565c0",
                lw=1.2, alpha=0.7, zorder=2, label="Pareto frontier")
    drawn = set()
    for c in timed + untimed:
        x = c["p50_ms"] if c["p50_ms"] is not None else x_untimed
        status = c["status"] if c["status"] in COLORS else "skipped"
        label = None
        if status not in drawn:
            label = {"ok": "within budget", "rejected": "rejected / failed", "failed": "rejected / failed",
                     "skipped": "skipped", "chosen": None}[status]
            drawn.update({"rejected", "failed"} if status in ("rejected", "failed") else {status})
        ax.scatter([x], [c["value"]], s=area(c), c=COLORS[status], alpha=0.45 if status != "ok" else 0.8,
                   edgecolors="white", linewidths=0.6, zorder=3, label=label)
    chosen = next((c for c in timed if c["status"] == "chosen"), None)
    if chosen:
        ax.scatter([chosen["p50_ms"]], [chosen["value"]], marker="*", s=420, c="gold", edgecolors="black",
                   linewidths=0.8, zorder=5, label=f"chosen: {chosen['id']}")
    if base["p50_ms"] is not None and base["value"] is not None:
        ax.scatter([base["p50_ms"]], [base["value"]], marker="s", s=160, facecolors="none", edgecolors="black",
                   linewidths=1.0, zorder=4, label="FP32 baseline")
    if untimed:
        ax.axvline((xmax + x_untimed) / 2, color=GREY, lw=0.6, ls=":")
        ax.text(x_untimed, lo - pad * 0.8, "not timed", ha="center", fontsize=7, color="#616161")
    ax.set_xlim(0, x_untimed * 1.12 if untimed else xmax * 1.18)
    _place_labels(fig, ax, [(c["p50_ms"] if c["p50_ms"] is not None else x_untimed, c["value"], c["id"])
                            for c in timed + untimed])
    ax.set_xlabel("p50 latency, ms (batch 1; lower is better)")
    ax.set_ylabel(f"{base['metric']} (higher is better)")
    ax.set_title("edgeai optimize: every candidate (marker area ∝ file size)", fontsize=10)
    ax.grid(alpha=0.25)
    legend = ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    for handle in legend.legend_handles:  # one marker size in the legend; area means size on the plot
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([60])
    fig.tight_layout()
    return fig


def _place_labels(fig, ax, points: list[tuple[float, float, str]]) -> None:
    """Annotate each point at the first offset whose box overlaps no earlier label and stays in the axes."""
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    placed = []
    for x, y, text in sorted(points, key=lambda p: (-p[1], p[0])):
        for dx, dy in LABEL_OFFSETS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=6.5,
                              ha="left" if dx >= 0 else "right", va="center", zorder=6)
            box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
            inside = (box.x0 >= axes_box.x0 and box.x1 <= axes_box.x1 and box.y0 >= axes_box.y0
                      and box.y1 <= axes_box.y1)
            if inside and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            ann.remove()
        else:  # nowhere free: the name is in the table; keep the plot readable
            continue
