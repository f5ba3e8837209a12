"""Render a collected run report as one self-contained HTML page: inline CSS, JS and SVG, images as data URIs."""
from __future__ import annotations

import html
import json
from typing import Any

from polycap.pipelines.report import (
    LENGTH_EDGES,
    RATIO_EDGES,
    SIZE_EDGES,
    GalleryItem,
    RejectExample,
    ReportData,
    bin_labels,
)

# The page may load nothing: a CSP that allows only inline code and data: images makes any accidental
# network reference a console error (which tests/pipelines/test_report_browser.py fails on).
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK KR",sans-serif;
  margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header .sub{color:#b8c0cc;font-size:12px;word-break:break-all}
nav a{color:#9cc3ff;margin-right:16px}main{padding:8px 24px 40px}
h2{margin:28px 0 10px;border-bottom:1px solid #d5d9e0;padding-bottom:4px}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{background:#fff;border:1px solid #d5d9e0;border-radius:6px;
  padding:8px 14px;min-width:110px}.card b{display:block;font-size:22px}.card.bad b{color:#b00020}
.card.good b{color:#137333}.notes li{color:#444}.problems li{color:#b00020}
.charts{display:flex;flex-wrap:wrap;gap:14px}figure.chart{background:#fff;border:1px solid #d5d9e0;
  border-radius:6px;margin:0;padding:8px 10px}figure.chart figcaption{font-weight:600;margin-bottom:4px}
svg.bars text{font-size:11px;fill:#333}.empty{color:#888;margin:0}
.toolbar{margin:8px 0 12px}
.sample{display:grid;grid-template-columns:minmax(180px,320px) 1fr;gap:14px;background:#fff;
  border:1px solid #d5d9e0;border-radius:6px;padding:10px;margin-bottom:12px}
.frame{position:relative;width:100%;background:#eee}.frame img{display:block;width:100%;height:100%}
.frame svg{position:absolute;inset:0;width:100%;height:100%}
.ocr-box{fill:rgba(255,200,0,.18);stroke:#e8590c;stroke-width:2}.ocr-box.hl{fill:rgba(255,80,0,.45)}
body.hide-boxes .frame svg{display:none}
.meta{font-size:12px;color:#555;word-break:break-all;margin-bottom:6px}.meta code{font-size:11px}
.captions{display:grid;gap:10px}.caption{background:#f6f7f9;border-radius:4px;padding:6px 8px}
.caption h4{margin:0 0 4px;font-size:12px;text-transform:uppercase;color:#4c78a8}
.caption h4 span{text-transform:none;color:#888;font-weight:400;margin-left:6px}
.caption p{margin:0;white-space:pre-wrap}.nocap{color:#888}
details.ocr{margin-top:8px;font-size:12px}details.ocr li:hover{background:#fff3bf;cursor:default}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #d5d9e0;padding:4px 8px;text-align:left}
td.n{text-align:right}.rejects{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:10px;
  margin-top:12px}.reject{background:#fff;border:1px solid #d5d9e0;border-radius:6px;padding:8px;font-size:12px}
.reject img{max-width:160px;max-height:160px;display:block;margin-bottom:6px}
.reject .nopreview{width:160px;height:60px;display:flex;align-items:center;justify-content:center;
  background:#eee;color:#888;margin-bottom:6px}.reason{font-weight:600;color:#b00020}
"""

# Toggle the OCR overlay; hovering an OCR line highlights its box.
JS = """
document.getElementById('toggle-boxes').addEventListener('change', function (e) {
  document.body.classList.toggle('hide-boxes', !e.target.checked);
});
document.querySelectorAll('details.ocr li').forEach(function (li) {
  var box = document.querySelector('#' + li.dataset.box);
  if (!box) return;
  li.addEventListener('mouseenter', function () { box.classList.add('hl'); });
  li.addEventListener('mouseleave', function () { box.classList.remove('hl'); });
});
"""

e = html.escape


def bar_chart(title: str, items: list[tuple[str, int]], color: str = "#4c78a8", note: str = "") -> str:
    """A horizontal bar chart as inline SVG (one bar per item, its value at the end)."""
    head = f'<figure class="chart"><figcaption>{e(title)}</figcaption>'
    if not items or not any(v for _, v in items):
        return head + '<p class="empty">none</p></figure>'
    label_w, bar_w, row = 150, 240, 20
    top = max(v for _, v in items)
    parts = []
    for i, (label, v) in enumerate(items):
        y, w = i * row, round(v / top * bar_w) if top else 0
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{e(label[:26])}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w}" height="{row - 6}" fill="{color}">'
                     f'<title>{e(label)}: {v}</title></rect>'
                     f'<text x="{label_w + w + 4}" y="{y + 14}">{v}</text>')
    height = row * len(items) + 4
    svg = (f'<svg class="bars" width="{label_w + bar_w + 60}" height="{height}" '
           f'viewBox="0 0 {label_w + bar_w + 60} {height}" role="img">{"".join(parts)}</svg>')
    return head + svg + (f'<p class="empty">{e(note)}</p>' if note else "") + "</figure>"


def _ordered(counter: Any, labels: list[str]) -> list[tuple[str, int]]:
    """Histogram bins in order, from the first non-empty bin to the last (empty ones between are kept)."""
    items = [(label, counter.get(label, 0)) for label in labels]
    used = [i for i, (_, v) in enumerate(items) if v]
    return items[used[0]: used[-1] + 1] if used else []


def _card(label: str, value: Any, cls: str = "") -> str:
    return f'<div class="card {cls}"><b>{e(str(value))}</b>{e(label)}</div>'


def _summary(d: ReportData) -> str:
    st = d.stats
    inputs = st.get("inputs")
    kept = st.get("kept", d.kept)
    rejected = st.get("rejected", d.rejected)
    balanced = st.get("balanced")
    cards = [_card("inputs", inputs if inputs is not None else "?"), _card("kept", kept),
             _card("rejected", rejected)]
    if balanced is not None:
        cards.append(_card("inputs = kept + rejected", "yes" if balanced else "MISMATCH",
                           "good" if balanced else "bad"))
    cards += [_card("shards", d.shards), _card("shard bytes", f"{d.shard_bytes / 1e6:.1f} MB"),
              _card("languages", len(d.languages))]
    notes = "".join(f"<li>{e(str(n))}</li>" for n in st.get("notes", []) or d.run.get("notes", []))
    problems = "".join(f"<li>{e(p)}</li>" for p in d.problems)
    return (f'<div class="cards">{"".join(cards)}</div>'
            + (f'<ul class="notes">{notes}</ul>' if notes else "")
            + (f'<ul class="problems">{problems}</ul>' if problems else ""))


def _charts(d: ReportData) -> str:
    scanned = f"from {d.scanned_samples} samples in {d.scanned_shards} of {d.shards} shards"
    charts = [
        bar_chart("Rejects by stage", d.by_stage.most_common(), "#c0392b"),
        bar_chart("Rejects by reason", [(f"{s}: {r}", n) for (s, r), n in d.by_reason.most_common()], "#e67e22"),
        bar_chart("Kept samples by caption language", d.languages.most_common(), "#2e86de"),
        bar_chart("Kept samples by source", d.sources.most_common(), "#8e44ad"),
        bar_chart("Image width (px)", _ordered(d.widths, bin_labels(SIZE_EDGES)), "#16a085"),
        bar_chart("Image height (px)", _ordered(d.heights, bin_labels(SIZE_EDGES)), "#16a085"),
    ]
    for lang in sorted(d.caption_lengths):
        charts.append(bar_chart(f"Caption length, {lang} (characters)",
                                _ordered(d.caption_lengths[lang], bin_labels(LENGTH_EDGES)), "#34495e", scanned))
    for lang in sorted(d.translation_ratios):
        charts.append(bar_chart(f"Translation length ratio, {lang} / source",
                                _ordered(d.translation_ratios[lang], bin_labels(RATIO_EDGES)), "#27ae60", scanned))
    return f'<div class="charts">{"".join(charts)}</div>'


def _points(line: dict[str, Any]) -> str:
    quad = line.get("quad") or []
    if len(quad) == 8:
        return " ".join(f"{quad[i]},{quad[i + 1]}" for i in range(0, 8, 2))
    x1, y1, x2, y2 = (list(line.get("box") or []) + [0, 0, 0, 0])[:4]
    return f"{x1},{y1} {x2},{y1} {x2},{y2} {x1},{y2}"


def _sample(n: int, it: GalleryItem) -> str:
    polys, lis = [], []
    for i, line in enumerate(it.ocr_lines):
        bid = f"b{n}-{i}"
        label = f"{line.get('text', '')} ({float(line.get('score') or 0):.2f})"
        polys.append(f'<polygon id="{bid}" class="ocr-box" vector-effect="non-scaling-stroke" '
                     f'points="{_points(line)}" data-box="{e(json.dumps(line.get("box")))}">'
                     f'<title>{e(label)}</title></polygon>')
        lis.append(f'<li data-box="{bid}">{e(label)}</li>')
    caps = "".join(
        f'<section class="caption" data-lang="{e(lang)}"><h4>{e(lang)}<span>{e(c["kind"])}</span></h4>'
        f'<p lang="{e(lang)}" dir="auto">{e(c["text"])}</p></section>' for lang, c in it.captions.items())
    cols = max(1, len(it.captions))
    n_lines = f'{len(lis)} line{"s" * (len(lis) != 1)}'
    ocr = (f'<details class="ocr"><summary>OCR: {n_lines}</summary><ol>{"".join(lis)}</ol></details>' if lis
           else (f'<p class="meta">OCR: {e(it.ocr_status)}</p>' if it.ocr_status else ""))
    return (f'<article class="sample" id="s-{e(it.key)}" data-key="{e(it.key)}">'
            f'<div><div class="frame" style="aspect-ratio:{it.width}/{it.height}">'
            f'<img src="{it.thumb}" alt="sample {e(it.key)}">'
            f'<svg viewBox="0 0 1000 1000" preserveAspectRatio="none">{"".join(polys)}</svg></div></div>'
            f'<div><div class="meta"><code>{e(it.key)}</code> · {it.width}×{it.height} · {e(it.shard)} · '
            f'{e(it.source_uri)}</div>'
            f'<div class="captions" style="grid-template-columns:repeat({cols},minmax(0,1fr))">'
            f'{caps or "<p class=nocap>no captions</p>"}</div>{ocr}</div></article>')


def _gallery(d: ReportData) -> str:
    head = (f'<p class="meta">{len(d.gallery)} kept samples: the first few of evenly spaced shards. OCR boxes '
            'are drawn from the record\'s <code>ocr.lines[].quad</code> (0–1000 grid).</p>'
            '<div class="toolbar"><label><input type="checkbox" id="toggle-boxes" checked> show OCR boxes'
            "</label></div>")
    return head + "".join(_sample(i, it) for i, it in enumerate(d.gallery))


def _reject(r: RejectExample) -> str:
    img = (f'<img src="{r.thumb}" alt="reject {e(r.key)}">' if r.thumb
           else '<div class="nopreview">no preview</div>')
    return (f'<div class="reject" data-key="{e(r.key)}" data-reason="{e(r.reason)}">{img}'
            f'<div class="reason">{e(r.stage)}: {e(r.reason)}</div><div>{e(r.detail)}</div>'
            f'<div class="meta"><code>{e(r.key)}</code><br>{e(r.source_uri)}</div></div>')


def _rejects(d: ReportData) -> str:
    if not d.rejected:
        return "<p>No rejects.</p>"
    rows = "".join(f'<tr><td>{e(s)}</td><td>{e(r)}</td><td class="n">{n}</td></tr>'
                   for (s, r), n in sorted(d.by_reason.items()))
    return (f'<table><tr><th>stage</th><th>reason</th><th>rejects</th></tr>{rows}</table>'
            f'<p class="meta">Examples: the first rejects of each reason (thumbnails where the source file is '
            f'still readable).</p><div class="rejects">{"".join(_reject(r) for r in d.reject_examples)}</div>')


def render(d: ReportData) -> str:
    run = d.run
    sub = " · ".join(str(x) for x in (d.run_dir, run.get("started"), run.get("code_version"),
                                      f"schema {d.stats.get('schema_version') or run.get('schema_version', '?')}")
                     if x)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>polycap report: {e(d.run_dir)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>polycap run report</h1><div class="sub">{e(sub)}</div>'
        '<nav><a href="#stats">stats</a><a href="#gallery">gallery</a><a href="#rejects">rejects</a></nav></header>'
        f'<main><h2 id="stats">Stats</h2>{_summary(d)}{_charts(d)}'
        f'<h2 id="gallery">Gallery</h2>{_gallery(d)}'
        f'<h2 id="rejects">Rejects ({d.rejected})</h2>{_rejects(d)}</main>'
        f"<script>{JS}</script></body></html>"
    )
