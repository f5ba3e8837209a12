"""Rendered ko / vi / en text cards with known text, for OCR evaluation and tests.

The text is NTREX-128 news sentences (human Korean and Vietnamese references, English source; CC BY-SA 4.0,
../shared/eval/text/ntrex128), wrapped into lines and drawn with Debian fonts (fonts-nanum, fonts-noto-cjk,
fonts-dejavu). The expected output is the text that was drawn: nothing is transcribed by hand. Conditions:
`clean` (24-30 px), `small` (13-15 px), `rotated` (a 2-6 degree skew), `photo` (on a real photo from
../shared/eval/photos, behind a translucent panel) and `low_contrast` (grey on grey). Deterministic for
a seed. `python -m bench.ocr_cards OUT_DIR [N_PER_LANG_AND_CONDITION]` writes PNGs + cards.jsonl.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EVAL = Path(os.environ.get("POLYCAP_EVAL_DIR", REPO.parent / "shared" / "eval"))
NTREX = {"ko": "newstest2019-ref.kor.txt", "vi": "newstest2019-ref.vie.txt", "en": "newstest2019-src.eng.txt"}
FONT_DIRS = ("/usr/share/fonts/truetype/nanum", "/usr/share/fonts/opentype/noto", "/usr/share/fonts/truetype/dejavu")
# (file, index inside a .ttc) per language; Noto CJK's .ttc index 1 is "Noto Sans CJK KR" on Debian 12.
FONTS = {
    "ko": [("NanumGothic.ttf", 0), ("NanumMyeongjo.ttf", 0), ("NotoSansCJK-Regular.ttc", 1)],
    "vi": [("DejaVuSans.ttf", 0), ("DejaVuSerif.ttf", 0), ("NotoSansCJK-Regular.ttc", 1)],
    "en": [("DejaVuSans.ttf", 0), ("DejaVuSerif.ttf", 0), ("NotoSansCJK-Regular.ttc", 1)],
}
APT_FONTS = "apt-get install -y fonts-nanum fonts-noto-cjk fonts-dejavu"
CONDITIONS = ("clean", "small", "rotated", "photo", "low_contrast")
PHOTOS = ("skimage/coffee.png", "skimage/astronaut.png", "skimage/chelsea.png", "skimage/rocket.jpg",
          "imageio_test_images/wood.jpg", "imageio_test_images/bricks.jpg", "imageio_test_images/kodim03.png")
WRAP = {"ko": 22, "vi": 38, "en": 40}   # characters per line: Hangul syllables are about twice as wide


@dataclass(frozen=True)
class Card:
    path: str
    lang: str
    condition: str
    font: str
    text: str            # the drawn lines, joined by "\n"


class MissingFonts(RuntimeError):
    """Fonts for the cards are not installed; the message says which apt packages bring them."""


def font_path(name: str) -> Path:
    for d in FONT_DIRS:
        p = Path(d) / name
        if p.is_file():
            return p
    raise MissingFonts(f"font {name} not found under {', '.join(FONT_DIRS)}: `{APT_FONTS}`")


def check_fonts() -> None:
    """Raise MissingFonts (with the install command) unless every card font is installed."""
    for fonts in FONTS.values():
        for name, _ in fonts:
            font_path(name)


def sentences(lang: str, eval_dir: Path = EVAL) -> list[str]:
    path = eval_dir / "text" / "ntrex128" / NTREX[lang]
    return [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if 20 <= len(s.strip()) <= 160]


def _wrap(text: str, lang: str, max_lines: int = 3) -> list[str]:
    return textwrap.wrap(text, WRAP[lang], break_long_words=False)[:max_lines]


def _draw(lines: list[str], font, fg, bg, pad: int):
    from PIL import Image, ImageDraw

    asc, desc = font.getmetrics()
    lh = int((asc + desc) * 1.35)
    width = max(int(font.getlength(ln)) for ln in lines) + 2 * pad
    img = Image.new("RGBA", (width, lh * len(lines) + 2 * pad), bg)
    d = ImageDraw.Draw(img)
    for i, ln in enumerate(lines):
        d.text((pad, pad + i * lh), ln, font=font, fill=fg)
    return img


def render_card(lines: list[str], lang: str, condition: str, rng: random.Random, eval_dir: Path = EVAL,
                font: str | None = None, face_file: tuple[Path, int] | None = None):
    """One RGB card (PIL image) showing `lines` under `condition`; returns (image, font file name). `font`
    (one of FONTS[lang]) instead of a random one; `face_file` = (font file, .ttc index) for any other font
    (bench/ocr_unseen.py). Besides CONDITIONS, `inverted` draws light text on a dark panel and `jpeg` stores a
    clean card as a JPEG of quality 25-60."""
    from PIL import Image, ImageFont

    if face_file:
        name, index = face_file[0].name, face_file[1]
    else:
        name, index = (font, dict(FONTS[lang])[font]) if font else rng.choice(FONTS[lang])
    size = rng.randint(13, 15) if condition == "small" else rng.randint(24, 30)
    face = ImageFont.truetype(str(face_file[0] if face_file else font_path(name)), size, index=index)
    pad = max(12, size)
    if condition == "inverted":
        g = rng.randint(20, 60)
        panel = _draw(lines, face, (235, 235, 235, 255), (g, g, g + rng.randint(0, 40), 255), pad)
    elif condition == "low_contrast":
        g = rng.randint(200, 225)
        panel = _draw(lines, face, (g - 70, g - 70, g - 70, 255), (g, g, g, 255), pad)
    elif condition == "photo":
        panel = _draw(lines, face, (15, 15, 15, 255), (255, 255, 255, 170), pad)
    else:
        panel = _draw(lines, face, (20, 20, 20, 255), (255, 255, 255, 255), pad)
    margin = 40
    canvas_size = (panel.width + 2 * margin, panel.height + 2 * margin)
    if condition == "photo":
        with Image.open(eval_dir / "photos" / rng.choice(PHOTOS)) as ph:
            canvas = ph.convert("RGB").resize(canvas_size, Image.Resampling.BILINEAR).convert("RGBA")
    else:
        canvas = Image.new("RGBA", canvas_size, panel.getpixel((0, 0)))
    canvas.alpha_composite(panel, (margin, margin))
    img = canvas.convert("RGB")
    if condition == "jpeg":     # as a photo or screenshot is often stored: ringing and blocks around strokes
        import io

        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=rng.randint(25, 60))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if condition == "rotated":
        angle = rng.choice((-1, 1)) * rng.uniform(2, 6)
        img = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255))
    return img, name


def make_cards(out_dir: str | Path, per_cell: int = 4, seed: int = 0, langs=("ko", "vi", "en"),
               conditions=CONDITIONS, eval_dir: Path = EVAL) -> list[Card]:
    """Render `per_cell` cards per (language, condition) into `out_dir`; writes cards.jsonl there too."""
    check_fonts()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cards = []
    for lang in langs:
        pool = sentences(lang, eval_dir)
        rng = random.Random(f"{seed}-{lang}")
        picks = rng.sample(pool, per_cell * len(conditions))
        for ci, condition in enumerate(conditions):
            for j in range(per_cell):
                lines = _wrap(picks[ci * per_cell + j], lang)
                img, font = render_card(lines, lang, condition, rng, eval_dir)
                path = out / f"{lang}-{condition}-{j:03d}.png"
                img.save(path)
                cards.append(Card(str(path), lang, condition, font, "\n".join(lines)))
    with open(out / "cards.jsonl", "w", encoding="utf-8") as f:
        for c in cards:
            f.write(json.dumps(asdict(c), ensure_ascii=False) + "\n")
    return cards


if __name__ == "__main__":
    dest = Path(sys.argv[1])
    if dest.exists():
        shutil.rmtree(dest)
    made = make_cards(dest, int(sys.argv[2]) if len(sys.argv) > 2 else 4)
    print(f"{len(made)} cards in {dest}")
