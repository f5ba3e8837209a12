"""OCR on fonts and text the OCR stage was never tuned on -> bench/results/ocr_unseen.json.

bench/ocr_ko_vi.py tunes and checks the OCR stage on NTREX news sentences drawn in six fonts (bench/ocr_cards.py).
This bench draws other text in other fonts, under the same conditions plus `inverted` (light text on a dark
panel) and `jpeg` (a clean card stored as a JPEG of quality 25-60), and reports CER per language, per
(language, font) and per (language, condition):

- Text: human UI-string translations from Debian gettext catalogs (the `.mo` files of CATALOG_PACKAGES, fetched
  with `apt-get download` into bench/work/catalogs/, as bench/translate_gates_catalogs.py does): Korean and
  Vietnamese msgstrs, English msgids. Only strings of 3+ words, 20-110 characters, with no markup or printf
  characters; the Vietnamese ones have a letter only Vietnamese uses, the Korean ones are mostly Hangul.
- Fonts: UNSEEN_FONTS, from the Debian packages in UNSEEN_DEBS (also installed by `make ocr-debs`); none is
  one of bench/ocr_cards.py's FONTS. Serif, bold, rounded, pen-like and italic faces are among them.

The drawn text is the reference (nothing is transcribed by hand); the sampling is deterministic for a seed.
Cards are read by the OCR stage's engine path (OcrRunner.read + to_ocr_result), in `--workers` processes (this
bench measures accuracy; bench/ocr_ko_vi.py measures speed). Scores as in bench/ocr_ko_vi.py: `cer` in the
stored reading order, `cer_line_aligned` after matching lines to the reference, `wer` on whitespace words.
Usage: `python -m bench.ocr_unseen [--per-cell N] [--workers W] [--keep DIR]`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import write_result
from bench.ocr_cards import CONDITIONS, WRAP, Card, _wrap, render_card
from bench.translate_gates_catalogs import catalog_pairs, fetch

LANGS = ("ko", "vi", "en")
UNSEEN_CONDITIONS = (*CONDITIONS, "inverted", "jpeg")
CATALOG_PACKAGES = ["libgtk-3-common", "libglib2.0-data", "git", "grub-common", "network-manager", "mc-data",
                    "gettext", "systemd", "mutt"]
UNSEEN_DEBS = ("fonts-unfonts-core fonts-baekmuk fonts-nanum-extra fonts-lexi-gulim fonts-noto-core "
               "fonts-liberation2 fonts-freefont-ttf fonts-roboto-unhinted")
FONT_ROOT = Path("/usr/share/fonts")
LATIN_FONTS = ["truetype/noto/NotoSans-Regular.ttf", "truetype/noto/NotoSerif-Regular.ttf",
               "truetype/noto/NotoSans-Bold.ttf", "truetype/liberation2/LiberationSans-Regular.ttf",
               "truetype/liberation2/LiberationSerif-Regular.ttf", "truetype/liberation2/LiberationSerif-Italic.ttf",
               "truetype/freefont/FreeSans.ttf", "truetype/freefont/FreeSerif.ttf",
               "truetype/roboto/unhinted/RobotoTTF/Roboto-Regular.ttf", "truetype/dejavu/DejaVuSans-Bold.ttf"]
# (file under /usr/share/fonts, family name inside a .ttc or None)
UNSEEN_FONTS: dict[str, list[tuple[str, str | None]]] = {
    "ko": [("truetype/unfonts-core/UnBatang.ttf", None), ("truetype/unfonts-core/UnDotum.ttf", None),
           ("truetype/unfonts-core/UnGraphic.ttf", None), ("truetype/unfonts-core/UnDinaru.ttf", None),
           ("truetype/baekmuk/batang.ttf", None), ("truetype/baekmuk/gulim.ttf", None),
           ("truetype/nanum/NanumBarunGothic.ttf", None), ("truetype/nanum/NanumGothicBold.ttf", None),
           ("truetype/nanum/NanumMyeongjoBold.ttf", None), ("truetype/nanum/NanumBarunpenR.ttf", None),
           ("truetype/lexi/LexiGulim.ttf", None), ("opentype/noto/NotoSerifCJK-Regular.ttc", "Noto Serif CJK KR"),
           ("opentype/noto/NotoSansCJK-Bold.ttc", "Noto Sans CJK KR")],
    "vi": [(f, None) for f in LATIN_FONTS],
    "en": [(f, None) for f in LATIN_FONTS],
}
_MARKUP = re.compile(r"[%$&_{}<>\\|@/=\[\]#*`~^\t\n]")
_VI_ONLY = set("ăĂđĐơƠưƯĩĨũŨ") | {chr(c) for c in range(0x1EA0, 0x1EFA)}
TARGETS = {"ko": 0.05, "vi": 0.05, "en": 0.01}


class MissingUnseenFonts(RuntimeError):
    """A font of UNSEEN_FONTS is not installed; the message names the apt packages."""


def face_file(rel: str, family: str | None) -> tuple[Path, int]:
    """(font file, index of `family` inside a .ttc, else 0)."""
    from PIL import ImageFont

    path = FONT_ROOT / rel
    if not path.is_file():
        raise MissingUnseenFonts(f"{path} not found: `apt-get install -y {UNSEEN_DEBS}` (or `make ocr-debs`)")
    if family is None:
        return path, 0
    for i in range(32):
        try:
            if ImageFont.truetype(str(path), 12, index=i).getname()[0] == family:
                return path, i
        except OSError:
            break
    raise MissingUnseenFonts(f"no face {family!r} in {path}")


def _keep(lang: str, src: str, text: str) -> bool:
    if _MARKUP.search(text) or _MARKUP.search(src) or not 20 <= len(text) <= 110 or len(text.split()) < 3:
        return False
    letters = [c for c in text if c.isalpha()]
    if lang == "ko":
        return sum(0xAC00 <= ord(c) <= 0xD7A3 for c in letters) >= 0.7 * len(letters)
    if lang == "vi":
        return any(c in _VI_ONLY for c in text)
    return text.isascii() and len(letters) >= 0.7 * len(text.replace(" ", ""))


def catalog_sentences(lang: str, work: Path, packages: list[str] = CATALOG_PACKAGES) -> list[str]:
    """Catalog strings of `lang` fit to draw as text (msgstrs for ko/vi, msgids for en), sorted by hash."""
    fetch(packages, work)
    seen: set[str] = set()
    for pkg in packages:
        for tgt in ("ko", "vi") if lang == "en" else (lang,):
            for src, text in catalog_pairs(work / pkg, tgt, limit=100_000).items():
                text = " ".join((src if lang == "en" else text).split())
                if _keep(lang, src, text):
                    seen.add(text)
    return sorted(seen, key=lambda t: hashlib.sha256(t.encode()).hexdigest())


def make_unseen_cards(out_dir: Path, per_cell: int = 2, seed: int = 0, langs=LANGS,
                      conditions=UNSEEN_CONDITIONS, work: Path | None = None) -> list[Card]:
    """`per_cell` cards per (language, font, condition), each with its own catalog string; cards.jsonl too."""
    from bench.translate_gates_catalogs import WORK

    out_dir.mkdir(parents=True, exist_ok=True)
    cards = []
    for lang in langs:
        pool = catalog_sentences(lang, work or WORK)
        rng = random.Random(f"unseen-{seed}-{lang}")
        fonts = UNSEEN_FONTS[lang]
        picks = rng.sample(pool, per_cell * len(conditions) * len(fonts))
        for fi, (rel, family) in enumerate(fonts):
            face = face_file(rel, family)
            font_name = Path(rel).stem + (f"[{family}]" if family else "")
            for ci, condition in enumerate(conditions):
                for j in range(per_cell):
                    lines = _wrap(picks[(fi * len(conditions) + ci) * per_cell + j], lang)
                    img, _ = render_card(lines, lang, condition, rng, face_file=face)
                    path = out_dir / f"{lang}-{Path(rel).stem}-{condition}-{j:02d}.png"
                    img.save(path)
                    cards.append(Card(str(path), lang, condition, font_name, "\n".join(lines)))
    with open(out_dir / "cards.jsonl", "w", encoding="utf-8") as f:
        for c in cards:
            f.write(json.dumps(asdict(c), ensure_ascii=False) + "\n")
    return cards


def _read_cards(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Worker: read each card with a fresh OcrRunner; one row per card (scores as bench/ocr_ko_vi.py)."""
    from bench.ocr_ko_vi import LANGS as RUN_LANGS
    from bench.ocr_ko_vi import _read, _score
    from polycap.schemas.config import OcrConfig
    from polycap.transforms.backends.ocr_handler import OcrRunner

    cfg = OcrConfig(enabled=True, langs=RUN_LANGS)
    runner = OcrRunner(cfg)
    rows = []
    for card in cards:
        res, secs, cpu = _read(runner, card["path"], cfg)
        texts = [ln.text for ln in res.lines]
        rows.append({**card, "score": _score(texts, card["text"]), "secs": (secs, cpu), "status": res.status,
                     "pred": "\n".join(texts)})
    return rows


def run(per_cell: int, workers: int, keep: Path | None) -> dict[str, Any]:
    import multiprocessing as mp

    from bench.ocr_ko_vi import _add, _finish

    with tempfile.TemporaryDirectory() as tmp:
        out = keep or Path(tmp)
        cards = [asdict(c) for c in make_unseen_cards(out, per_cell)]
        load0 = os.getloadavg()[0]
        with mp.get_context("spawn").Pool(workers) as pool:
            rows = [r for part in pool.map(_read_cards, [cards[i::workers] for i in range(workers)]) for r in part]
    groups: dict[str, dict[str, Any]] = {}
    card_rows = []
    for r in sorted(rows, key=lambda r: r["path"]):
        for key in (r["lang"], f"{r['lang']}/{r['font']}", f"{r['lang']}/{r['condition']}", "all"):
            _add(groups, key, r["score"], r["secs"], r["status"])
        dist, _, n, (wdist, wn) = r["score"]
        if dist:
            card_rows.append({"card": Path(r["path"]).name, "font": r["font"], "status": r["status"],
                              "cer": round(dist / max(n, 1), 4), "wer": round(wdist / max(wn, 1), 4),
                              "gt": r["text"], "pred": r["pred"]})
    res = _finish(groups)
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus (shared; timings are not this bench's point)",
        "loadavg_1min_before": round(load0, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "cards_per_lang_font_and_condition": per_cell, "conditions": list(UNSEEN_CONDITIONS),
        "fonts": {lang: [Path(f).stem + (f"[{fam}]" if fam else "") for f, fam in fs]
                  for lang, fs in UNSEEN_FONTS.items()},
        "text": {"source": "Debian gettext catalogs", "packages": CATALOG_PACKAGES, "wrap": WRAP},
        "targets": TARGETS, "pass": {lang: res[lang]["cer"] < TARGETS[lang] for lang in LANGS if lang in res},
        "cards": res, "card_rows": card_rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-cell", type=int, default=2, help="cards per (language, font, condition)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="write the cards here (kept) instead of a temporary folder")
    args = ap.parse_args(argv)
    results = run(args.per_cell, args.workers, args.keep)
    write_result("ocr_unseen", results)
    for k, v in results["cards"].items():
        print(f"{k:40s} cer={v['cer']:.4f} aligned={v['cer_line_aligned']:.4f} wer={v['wer']:.4f} {v['status']}",
              file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
