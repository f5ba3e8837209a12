"""Near-dup evaluation set, built reproducibly: distinct text cards, documents and screenshot-like images of
one layout each (PIL + Debian fonts, sentences from ../shared/eval/text/ntrex128), distinct real photos
(../shared/eval/photos), and border / letterbox / 5 % crop / watermark / recompress / resize variants of a
seeded subset of them.

Run: `.venv/bin/python -m bench.neardup_data` -> bench/work/neardup_set/{files..., labels.json}.
labels.json lists every file with its group (one group per original picture), role (`original` or the
variant's name) and family (text | doc | screen | photo). Nothing in it is hand-written: the groups are
the generator's own bookkeeping. Seeded, so every run writes the same images.
"""
from __future__ import annotations

import io
import json
import os
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

REPO = Path(__file__).resolve().parents[1]
EVAL = Path(os.environ.get("POLYCAP_EVAL_DIR", REPO.parent / "shared" / "eval"))
OUT = REPO / "bench" / "work" / "neardup_set"
NTREX = EVAL / "text" / "ntrex128"
FONTS = {
    "sans": "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "serif": "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "mono": "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "bold": "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "ko": "/usr/share/fonts/truetype/nanum/NanumGothic.ttf",
}
# Distinct real photos. Left out: motorcycle_right (stereo pair of motorcycle_left, 'maybe' in
# eval/neardup/pairs.csv), img2dataset_tests other than 321_421 (resizes/crops of one photo), edge formats.
PHOTOS = [
    "skimage/astronaut.png", "skimage/brick.png", "skimage/camera.png", "skimage/chelsea.png",
    "skimage/clock_motion.png", "skimage/coffee.png", "skimage/coins.png", "skimage/grass.png",
    "skimage/gravel.png", "skimage/hubble_deep_field.jpg", "skimage/ihc.png", "skimage/moon.png",
    "skimage/motorcycle_left.png", "skimage/page.png", "skimage/retina.jpg", "skimage/rocket.jpg",
    "sklearn/china.jpg", "sklearn/flower.jpg", "matplotlib/grace_hopper.jpg",
    "llava_examples/extreme_ironing.jpg", "llava_examples/waterview.jpg",
    "imageio_test_images/Ankylosaurus_and_Stegosaurus_Thumbnail.jpg", "imageio_test_images/bricks.jpg",
    "imageio_test_images/kodim03.png", "imageio_test_images/wikkie.png", "imageio_test_images/wood.jpg",
    "imageio_test_images/rommel.jpg", "img2dataset_tests/321_421.jpg",
]
VARIANTS = ("border", "letterbox", "crop5", "watermark", "recompress", "resize")
N_CARDS_EN, N_CARDS_KO, N_CARDS_VI, N_DOCS, N_SCREENS = 70, 35, 35, 40, 40
VARIANT_GROUPS = {"text": 24, "doc": 12, "screen": 12, "photo": len(PHOTOS)}   # originals given variants


def sentences(lang: str) -> list[str]:
    name = {"en": "newstest2019-src.eng.txt", "ko": "newstest2019-ref.kor.txt", "vi": "newstest2019-ref.vie.txt"}
    lines = (NTREX / name[lang]).read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if 40 <= len(ln.strip()) <= 160]


def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(FONTS[name], size)


def wrap(draw: ImageDraw.ImageDraw, text: str, f: ImageFont.FreeTypeFont, width: int) -> list[str]:
    words, lines, cur = text.split(), [], ""
    for w in words:
        nxt = f"{cur} {w}".strip()
        if draw.textlength(nxt, font=f) <= width or not cur:
            cur = nxt
        else:
            lines.append(cur)
            cur = w
    return lines + ([cur] if cur else [])


def text_card(text: str, lang: str) -> Image.Image:
    """One fixed layout for every card: 800x450, plain background, centred dark text."""
    im = Image.new("RGB", (800, 450), (246, 244, 238))
    d = ImageDraw.Draw(im)
    f = font("ko" if lang == "ko" else "sans", 34)
    lines = wrap(d, text, f, 680)[:6]
    y = 225 - len(lines) * 24
    for ln in lines:
        d.text((400 - d.textlength(ln, font=f) / 2, y), ln, fill=(30, 30, 40), font=f)
        y += 48
    return im


def document(paras: list[str], title: str) -> Image.Image:
    """A page: title, then justified-looking paragraphs in a serif font, same margins every page."""
    im = Image.new("RGB", (850, 1100), (255, 255, 255))
    d = ImageDraw.Draw(im)
    ft, fb = font("bold", 30), font("serif", 19)
    d.text((80, 80), title[:48], fill=(0, 0, 0), font=ft)
    y = 150
    for p in paras:
        for ln in wrap(d, p, fb, 690):
            if y > 1000:
                return im
            d.text((80, y), ln, fill=(20, 20, 20), font=fb)
            y += 27
        y += 18
    return im


def screenshot(lines: list[str], title: str, rng: random.Random) -> Image.Image:
    """A window: title bar, sidebar with items, monospace text lines; the same chrome on every image."""
    im = Image.new("RGB", (1024, 640), (250, 250, 250))
    d = ImageDraw.Draw(im)
    d.rectangle((0, 0, 1024, 36), fill=(52, 58, 70))
    d.text((16, 8), title[:60], fill=(235, 235, 235), font=font("sans", 17))
    d.rectangle((0, 36, 200, 640), fill=(232, 234, 238))
    fs = font("sans", 15)
    for i in range(12):
        d.text((18, 56 + i * 34), f"{lines[i % len(lines)].split()[0][:14]}", fill=(60, 60, 60), font=fs)
    fm, y = font("mono", 15), 56
    for ln in lines:
        for part in wrap(d, ln, fm, 780):
            if y > 610:
                return im
            d.text((220, y), part, fill=(20, 20, 20) if rng.random() < 0.8 else (30, 90, 170), font=fm)
            y += 22
    return im


def jpeg(im: Image.Image, q: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return buf.getvalue()


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def variant(name: str, im: Image.Image, rng: random.Random) -> bytes:
    w, h = im.size
    if name == "border":             # an added frame, 6 % of the short side, plain colour
        pad = max(4, min(w, h) * 6 // 100)
        return jpeg(ImageOps.expand(im, pad, fill=rng.choice([(0, 0, 0), (255, 255, 255), (200, 30, 30)])), 90)
    if name == "letterbox":          # onto a square black canvas (the img2dataset 'border' resize mode)
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), (0, 0, 0))
        canvas.paste(im, ((side - w) // 2, (side - h) // 2))
        return jpeg(canvas, 90)
    if name == "crop5":              # 5 % off the area, off-centre
        cw, ch = round(w * 0.975), round(h * 0.975)
        x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return jpeg(im.crop((x0, y0, x0 + cw, y0 + ch)), 90)
    if name == "watermark":          # semi-transparent text in a corner and across the middle
        base = im.convert("RGBA")
        layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
        d = ImageDraw.Draw(layer)
        f = font("bold", max(12, h // 14))
        d.text((w // 20, h - h // 8), "(c) stock-photo.example", fill=(255, 255, 255, 150), font=f)
        d.text((w // 3, h // 2), "SAMPLE", fill=(128, 128, 128, 90), font=f)
        return jpeg(Image.alpha_composite(base, layer).convert("RGB"), 85)
    if name == "recompress":
        return jpeg(im, 30)
    if name == "resize":
        return jpeg(im.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS), 90)
    raise ValueError(name)


def originals(rng: random.Random) -> list[tuple[str, str, bytes]]:
    """(family, name, bytes) of every distinct original; rendered ones are PNG, photos their own file."""
    out: list[tuple[str, str, bytes]] = []
    en, ko, vi = sentences("en"), sentences("ko"), sentences("vi")
    # aligned lines: card i in Korean / Vietnamese says what English card i says (the hard case)
    picks = rng.sample(range(min(len(en), len(ko), len(vi))), N_CARDS_EN)
    for i, j in enumerate(picks):
        out.append(("text", f"card_en_{i:03d}", png(text_card(en[j], "en"))))
    for i, j in enumerate(picks[:N_CARDS_KO]):
        out.append(("text", f"card_ko_{i:03d}", png(text_card(ko[j], "ko"))))
    for i, j in enumerate(picks[:N_CARDS_VI]):
        out.append(("text", f"card_vi_{i:03d}", png(text_card(vi[j], "vi"))))
    for i in range(N_DOCS):
        start = rng.randrange(len(en) - 12)
        out.append(("doc", f"doc_{i:03d}", png(document([" ".join(en[start + k:start + k + 3]) for k in
                                                                 range(0, 12, 3)], en[start]))))
    for i in range(N_SCREENS):
        start = rng.randrange(len(en) - 20)
        out.append(("screen", f"screen_{i:03d}", png(screenshot(en[start:start + 20], en[start], rng))))
    for p in PHOTOS:
        out.append(("photo", "photo_" + Path(p).stem, (EVAL / "photos" / p).read_bytes()))
    return out


def build(out_dir: Path = OUT, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, origs = [], originals(rng)
    by_family: dict[str, list[int]] = {}
    for i, (fam, _, _) in enumerate(origs):
        by_family.setdefault(fam, []).append(i)
    with_variants = {i for fam, idx in by_family.items() for i in rng.sample(idx, min(len(idx), VARIANT_GROUPS[fam]))}
    for i, (fam, name, data) in enumerate(origs):
        ext = ".png" if data[:4] == b"\x89PNG" else ".jpg"
        (out_dir / f"{name}{ext}").write_bytes(data)
        rows.append({"file": f"{name}{ext}", "group": name, "role": "original", "family": fam})
        if i not in with_variants:
            continue
        im = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        for v in VARIANTS:
            (out_dir / f"{name}__{v}.jpg").write_bytes(variant(v, im, rng))
            rows.append({"file": f"{name}__{v}.jpg", "group": name, "role": v, "family": fam})
    (out_dir / "labels.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    labels = build()
    fams: dict[str, int] = {}
    for r in labels:
        if r["role"] == "original":
            fams[r["family"]] = fams.get(r["family"], 0) + 1
    print(f"{len(labels)} files in {OUT}; distinct originals by family: {fams}", file=sys.stderr)
