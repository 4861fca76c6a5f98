"""report.html: one self-contained page (no scripts, no external files) with the choice, the plot, the table and the notes."""
from __future__ import annotations

import base64
from html import escape
from typing import Any

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#212121;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 .25rem} h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
.chosen{background:#e8f5e9;border-left:4px solid #2e7d32;padding:.6rem .9rem;margin:1rem 0}
.stopped{background:#fff3e0;border-left:4px solid #ef6c00;padding:.6rem .9rem;margin:1rem 0}
table{border-collapse:collapse;width:100%;font-size:12.5px}
th,td{border-bottom:1px solid #e0e0e0;padding:.3rem .45rem;text-align:right;vertical-align:top}
th{background:#fafafa;position:sticky;top:0}
td.l,th.l{text-align:left} tr.s-chosen td{background:#f1f8e9;font-weight:600}
tr.s-rejected td,tr.s-failed td,tr.s-skipped td{color:#757575}
img{max-width:100%;height:auto;border:1px solid #eeeeee}
.meta{color:#616161;font-size:12.5px} code{font-size:12px}
"""


def _f(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def metric_cell(c: dict, spec: str = ".4g") -> str:
    """The metric the budget judged, with this machine's number beside it when it was measured on a device."""
    if c.get("accuracy_measured_on") not in (None, "host") and c.get("host_value") is not None:
        return f"{_f(c['value'], spec)} (host {_f(c['host_value'], spec)})"
    return _f(c["value"], spec)


def accuracy_where(report: dict) -> str:
    """Where the accuracy numbers were measured (with --device), in one sentence."""
    device = report["config"]["device"]
    here = sum(c.get("accuracy_measured_on") == "host" for c in report["candidates"])
    return (f"Accuracy measured on {device}: each artifact run there by edgeai.runtime on the evaluation data, "
            f"scored here; the budget is judged on the device's numbers (this machine's in brackets)"
            + (f"; {here} candidate(s) could not run there and carry this machine's numbers only." if here else "."))


def report_html(report: dict, png: bytes) -> str:
    """The page: headline, stopped-early banner, plot (inline PNG), candidates, formats, notes, machine."""
    base = report["baseline"]
    rows = []
    for c in report["candidates"]:
        size = c["size_bytes"] / 1e6 if c["size_bytes"] else None
        rows.append(
            f'<tr class="s-{escape(c["status"])}"><td class="l"><code>{escape(c["id"])}</code></td>'
            f'<td class="l">{escape(c["status"])}</td><td>{_f(size, ".3f")}</td><td>{_f(c["p50_ms"], ".4g")}</td>'
            f'<td>{_f(c["p90_ms"], ".4g")}</td><td>{_f(c["speedup"], ".2f")}</td>'
            f'<td>{escape(metric_cell(c, ".5g"))}</td>'
            f'<td>{_f(c["drop"], "+.4g")}</td><td class="l">{escape(c["reason"])}</td></tr>')
    stopped = report.get("stopped")
    banner = (f'<div class="stopped"><b>Stopped early</b> after {stopped["after_s"] / 60:.1f} min '
              f'({escape(stopped["why"])}): the choice is the best of what was built and timed by then.</div>'
              if stopped else "")
    formats = report.get("formats") or []
    formats_html = ""
    if len(formats) > 1:
        formats_html = ("<h2>Formats against the same baseline</h2><table><tr><th class='l'>format</th>"
                        "<th>FP32 speedup</th><th class='l'>best</th><th>speedup</th></tr>" + "".join(
                            f"<tr><td class='l'>{escape(f['format'])}</td><td>{_f(f.get('fp32_speedup'), '.2f')}</td>"
                            f"<td class='l'>{escape(str(f.get('best') or '-'))}</td>"
                            f"<td>{_f(f.get('best_speedup'), '.2f')}</td></tr>" for f in formats) + "</table>")
    notes = "".join(f"<li>{escape(n)}</li>" for n in report.get("notes") or [])
    cpu = report["env"].get("cpu", {})
    device = report["env"].get("device")
    where = f"Timed on {escape(str(device.get('device')))}" if device else "Timed on this machine"
    measured = f"<p class='meta'>{escape(accuracy_where(report))}</p>" if report["config"].get("device") else ""
    img = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>edgeai optimize: {escape(report['chosen'])}</title><style>{CSS}</style></head>
<body>
<h1>edgeai optimize: {escape(report['chosen'])}</h1>
<p class="meta">Objective {escape(report['objective'])}; accuracy budget {report['max_drop']:g} ({escape(str(base['metric']))});
{escape(report['rule'])}. Search took {report['elapsed_s'] / 60:.1f} of {report['budget_minutes']:g} min.</p>
{banner}
<div class="chosen"><b>Chosen:</b> {escape(report['why'])}</div>
<img alt="metric against p50 latency for every candidate" src="data:image/png;base64,{img}">
<h2>Candidates</h2>
<table><tr><th class="l">candidate</th><th class="l">status</th><th>size MB</th><th>p50 ms</th><th>p90 ms</th>
<th>speedup</th><th>{escape(str(base['metric']))}</th><th>drop</th><th class="l">reason</th></tr>
{''.join(rows)}</table>
{measured}
{formats_html}
{f'<h2>Notes</h2><ul>{notes}</ul>' if notes else ''}
<p class="meta">{where}: {escape(str(cpu.get('model', '?')))} ({escape(str(cpu.get('machine', '?')))}; flags:
{escape(' '.join(cpu.get('flags', [])))}); {report['config']['rounds']} interleaved rounds, each candidate in a
fresh process, {report['config']['threads']} thread(s), batch 1.</p>
</body></html>
"""
