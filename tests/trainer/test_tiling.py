"""InternVL 1.5 dynamic tiling: grid choice, tie-breaking, tiles + thumbnail, parity with transformers."""
from __future__ import annotations

import random

import pytest
from PIL import Image

from polycap.trainer.tiling import IMAGENET_MEAN, IMAGENET_STD, candidate_grids, closest_grid, dynamic_tiles, normalize


def test_paper_example_800x1300_is_2x3_grid_896x1344():
    assert closest_grid(800, 1300, max_tiles=12) == (2, 3)
    tiles = dynamic_tiles(Image.new("RGB", (800, 1300)), max_tiles=12)
    assert len(tiles) == 2 * 3 + 1                      # six 448 tiles of the 896x1344 resize + thumbnail
    assert all(t.size == (448, 448) for t in tiles)


def test_candidates_are_all_grids_up_to_max_tiles():
    grids = candidate_grids(12)
    assert set(grids) == {(i, j) for i in range(1, 13) for j in range(1, 13) if i * j <= 12}
    assert [g[0] * g[1] for g in grids] == sorted(g[0] * g[1] for g in grids)


def test_ties_go_to_larger_grid_only_while_it_is_at_most_twice_the_image():
    # squares tie between 1x1, 2x2, 3x3: the larger grid wins only while image area > half the grid area
    assert closest_grid(448, 448) == (1, 1)
    assert closest_grid(900, 900) == (2, 2)      # 810000 > 0.5*4*448^2 but not > 0.5*9*448^2
    assert closest_grid(1000, 1000) == (3, 3)    # 1e6 > 0.5*9*448^2 = 903168
    assert closest_grid(5000, 100, max_tiles=12) == (12, 1)
    assert closest_grid(5000, 100, max_tiles=1) == (1, 1)


def test_one_tile_has_no_thumbnail_and_tiles_are_cut_row_major():
    assert len(dynamic_tiles(Image.new("RGB", (300, 310)), max_tiles=12)) == 1
    im = Image.new("RGB", (896, 448), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 448, 448))
    left, right, thumb = dynamic_tiles(im, max_tiles=2)
    assert left.getpixel((10, 10)) == (255, 0, 0) and right.getpixel((10, 10)) == (0, 0, 255)
    assert thumb.size == (448, 448)


def test_grid_matches_transformers_got_ocr2_on_random_sizes():
    tf = pytest.importorskip("transformers.models.got_ocr2.image_processing_pil_got_ocr2")
    rng = random.Random(0)
    for _ in range(2000):
        w, h, m = rng.randint(8, 6000), rng.randint(8, 6000), rng.randint(1, 40)
        assert closest_grid(w, h, m) == tuple(tf.get_optimal_tiled_canvas((h, w), (448, 448), 1, m)), (w, h, m)


def test_pixel_values_equal_the_saved_processor(tiny_model_dir):
    import numpy as np

    from polycap.sharding.checkpoint import load_processor

    ip = load_processor(tiny_model_dir).image_processor
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (650, 400, 3), dtype=np.uint8))
    ref = ip(images=[img], return_tensors="pt", max_patches=6)["pixel_values"]
    mine = normalize(dynamic_tiles(img, 6, tile=ip.size["height"]), ip.image_mean, ip.image_std)
    assert mine.shape == ref.shape and float((mine - ref).abs().max()) < 1e-5


def test_default_normalization_is_the_imagenet_statistics():
    """InternViT is trained with the ImageNet mean/std (torchvision's published values)."""
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    gray = Image.new("RGB", (448, 448), (124, 116, 104))          # ~ the mean colour itself
    x = normalize([gray])
    assert x.shape == (1, 3, 448, 448) and float(x.abs().max()) < 0.01
