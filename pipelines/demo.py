"""`make demo`: build the bundled sample (real skimage photos + generated cards + bad files) and run the job."""
from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"

# Real photos bundled in scikit-image's wheel, with a short alt-text-like source caption each.
PHOTOS = {
    "astronaut.png": "Portrait of astronaut Eileen Collins in uniform with an American flag.",
    "chelsea.png": "A tabby cat named Chelsea looking to the side.",
    "coffee.png": "A cup of coffee on a saucer, seen from above.",
    "rocket.jpg": "A rocket on the launch pad under a blue sky.",
    "hubble_deep_field.jpg": "The Hubble Deep Field: many distant galaxies.",
    "motorcycle_left.png": "",
    "camera.png": "A man with a camera on a tripod, black and white.",
    "coins.png": "",
    "brick.png": "",
    "page.png": "",
}
CARDS = [
    ("card_sale.png", "SUMMER SALE\n50% OFF ALL ITEMS", "A shop sign announcing a summer sale."),
    ("card_menu.png", "CAFE MENU\nCoffee 3.50\nTea 2.80", "A small cafe menu."),
    ("card_station.png", "Central Station\nPlatform 4", ""),
]


def load_font(size: int, bold: bool = False) -> ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's data when it is installed, else Pillow's built-in scalable font."""
    try:
        import matplotlib

        name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size=size)


def text_card(text: str, size: tuple[int, int] = (640, 360)) -> Image.Image:
    img = Image.new("RGB", size, (250, 248, 240))
    draw = ImageDraw.Draw(img)
    draw.multiline_text((40, 60), text, fill=(20, 20, 20), font=load_font(48, bold=True), spacing=20)
    return img


def _save(img: Image.Image, path: Path, caption: str = "", **kw) -> None:
    img.save(path, **kw)
    if caption:
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")


def build_sample(dest: Path) -> Path:
    """Write the demo input folder; returns it. Deterministic, so reruns give the same shards."""
    import skimage

    data_dir = Path(skimage.__file__).parent / "data"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name, caption in PHOTOS.items():
        shutil.copyfile(data_dir / name, dest / name)
        if caption:
            (dest / name).with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    for name, text, caption in CARDS:
        _save(text_card(text), dest / name, caption)
    # an exact duplicate and a near-duplicate (half size, recompressed) of real photos
    shutil.copyfile(data_dir / "coffee.png", dest / "coffee_copy.png")
    chelsea = Image.open(data_dir / "chelsea.png").convert("RGB")
    _save(chelsea.resize((chelsea.width // 2, chelsea.height // 2)), dest / "chelsea_small.jpg", quality=70)
    # bad inputs: corrupt (truncated JPEG), empty, not an image, too small, extreme aspect
    buf = io.BytesIO()
    Image.open(data_dir / "astronaut.png").convert("RGB").save(buf, format="JPEG")
    (dest / "broken.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (dest / "empty.jpg").write_bytes(b"")
    (dest / "readme.html").write_text("<html><body>not an image</body></html>")
    Image.new("RGB", (32, 32), (0, 128, 0)).save(dest / "tiny.png")
    text_card("BANNER", size=(1600, 120)).save(dest / "banner.png")
    return dest


def main() -> int:
    from polycap.pipelines.run import run, summary_lines
    from polycap.schemas.config import load_config

    cfg = load_config(DEMO_CONFIG)
    build_sample(Path(cfg.sources[0].path))
    stats = run(cfg, sys.argv[1:], config_path=str(DEMO_CONFIG))
    print("\n".join(summary_lines(stats, cfg.output)))
    from polycap.pipelines.report import write_report

    print(f"[polycap] report: {write_report(cfg.output)} (open it in a browser; `polycap report OUT` writes one)")
    if not stats["balanced"]:
        return 3
    if os.environ.get("POLYCAP_DEMO_TRAIN", "1") != "0":
        from polycap.trainer.train import run as train

        print("[polycap] short pretrain run of the tiny model on the demo shards (smoke test, CPU)")
        metrics = train("pretrain", str(REPO / "configs" / "train-tiny.yaml"), cfg.output,
                        ["pretrain.max_steps=20", f"train.out_dir={cfg.output}-train",
                         "train.resume=false"])
        print(f"[polycap] tiny pretrain (smoke quality): loss {metrics['first_loss']:.3f} -> "
              f"{metrics['loss']:.3f} in {metrics['steps']} steps; checkpoint {metrics['final_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
