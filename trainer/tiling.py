"""InternVL 1.5 dynamic high-resolution tiling: 448-px tiles on the closest-aspect grid, plus a thumbnail."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

TILE = 448          # InternVL 1.5 (arXiv:2404.16821) section 3.2: 448x448 tiles
MAX_TILES = 12      # 1..12 tiles in training (same paper); up to 40 at test time
IMAGENET_MEAN = (0.485, 0.456, 0.406)   # InternViT normalization
IMAGENET_STD = (0.229, 0.224, 0.225)


def candidate_grids(max_tiles: int = MAX_TILES, min_tiles: int = 1) -> list[tuple[int, int]]:
    """All (cols, rows) with min_tiles <= cols*rows <= max_tiles, fewest tiles first."""
    grids = {(i, j) for n in range(min_tiles, max_tiles + 1)
             for i in range(1, n + 1) for j in range(1, n + 1) if min_tiles <= i * j <= max_tiles}
    return sorted(grids, key=lambda g: (g[0] * g[1], g))


def closest_grid(width: int, height: int, max_tiles: int = MAX_TILES, tile: int = TILE,
                 min_tiles: int = 1) -> tuple[int, int]:
    """The grid whose aspect ratio is closest to the image's.

    On an exact tie the later (larger) grid wins only while the image area exceeds half the grid's pixel
    area, i.e. the grid is at most 2x the image (InternVL's `find_closest_aspect_ratio`).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(max_tiles, min_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def dynamic_tiles(image: Image.Image, max_tiles: int = MAX_TILES, tile: int = TILE,
                  use_thumbnail: bool = True) -> list[Image.Image]:
    """Resize to the chosen grid, cut row-major into tiles, and append a thumbnail when >1 tile."""
    from PIL import Image

    cols, rows = closest_grid(image.width, image.height, max_tiles, tile)
    resized = image.resize((cols * tile, rows * tile), Image.Resampling.BICUBIC)
    tiles = [resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile))
             for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile, tile), Image.Resampling.BICUBIC))
    return tiles


def normalize(tiles: list[Image.Image], mean: Any = IMAGENET_MEAN, std: Any = IMAGENET_STD):
    """Tiles -> float32 tensor [n, 3, tile, tile]: rescale to 0..1, then (x - mean) / std per channel."""
    import numpy as np
    import torch

    scaled = np.stack([np.asarray(t, dtype=np.float32) for t in tiles]) / np.float32(255.0)   # n, H, W, 3
    norm = (scaled - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(norm.transpose(0, 3, 1, 2), dtype=np.float32))


def load_rgb(data: bytes) -> Image.Image:
    """Decode image bytes (shards hold normalized JPEGs) to RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def pixel_values(data: bytes, max_tiles: int = MAX_TILES, tile: int = TILE, mean: Any = IMAGENET_MEAN,
                 std: Any = IMAGENET_STD):
    """Image bytes -> InternVL `pixel_values` [n_tiles(+thumbnail), 3, tile, tile]."""
    return normalize(dynamic_tiles(load_rgb(data), max_tiles, tile), mean, std)
