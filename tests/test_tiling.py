"""Tile grid at a fixed physical scale; Parquet round trip; the tile-slide verb on real slides."""

import subprocess
import sys

import numpy as np
import pytest

from pipeline.slides.tiling import TileGrid, read_tile_grid, tile_grid, write_tile_grid


def test_grid_scale_and_tissue_selection():
    mask = np.zeros((100, 150), bool)  # 150 x 100 mask px at 8 um/px = 1200 x 800 um
    mask[:, :75] = True  # left half is tissue
    # slide 4800 x 3200 px at 0.25 um/px; tiles of 100 px at 1.0 um/px = 400 level-0 px = 100 um
    x, y, frac = tile_grid(mask, 8.0, 0.25, 4800, 3200, 1.0, 100, 0.5)
    assert len(x) == 6 * 8  # 12 x 8 tiles in all, left 6 columns are tissue
    assert set(np.unique(x)) == {0, 400, 800, 1200, 1600, 2000}
    assert y.max() == 2800 and (frac == 1.0).all()
    assert x.dtype == np.int64


def test_partial_tiles_respect_min_fraction():
    mask = np.zeros((10, 10), bool)
    mask[:, :3] = True  # 30 % of the single 10 x 10 mask-px tile
    assert len(tile_grid(mask, 10.0, 1.0, 100, 100, 1.0, 100, 0.25)[0]) == 1
    assert len(tile_grid(mask, 10.0, 1.0, 100, 100, 1.0, 100, 0.5)[0]) == 0


def test_no_tile_fits_gives_empty_grid():
    x, y, frac = tile_grid(np.ones((4, 4), bool), 8.0, 0.5, 100, 100, 1.0, 224, 0.5)
    assert len(x) == len(y) == len(frac) == 0


def test_parquet_round_trip(tmp_path):
    grid = TileGrid(np.array([0, 448]), np.array([896, 0]), np.array([1.0, 0.6], np.float32),
                    {"slide_id": "s1", "mpp": 0.5, "status": "ok"})
    write_tile_grid(tmp_path / "t.parquet", grid)
    back = read_tile_grid(tmp_path / "t.parquet")
    assert back.x.tolist() == [0, 448] and back.y.tolist() == [896, 0]
    assert back.meta == grid.meta
    assert not list(tmp_path.glob(".*.tmp"))


def _tile_slide(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", "tile-slide", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_tile_slide_refuses_a_slide_coarser_than_the_tiles(tmp_path):
    from conftest import blob_image, write_pyramid_tiff
    from pipeline.errors import SlideError
    from pipeline.slides.reader import open_slide
    from pipeline.slides.tiling import grid_for_slide

    slide = write_pyramid_tiff(tmp_path / "coarse.svs", blob_image(1024, 768), mpp=2.0, levels=1, aperio=True)
    proc = _tile_slide("--slide", slide, "--out", tmp_path / "t.parquet")  # 112 px would be enlarged to 224
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "coarse.svs: QC failed: scanned at 2 um/px, coarser than the 1 um/px" in proc.stderr
    assert not (tmp_path / "t.parquet").exists()
    tiling = {"target_mpp": 1.0, "tile_px": 224, "min_tissue_fraction": 0.5}
    with open_slide(slide) as s, pytest.raises(SlideError, match="the tiles \\(tiling.target_mpp\\)"):
        grid_for_slide(s, np.ones((96, 128), bool), 16.0, tiling, "coarse")


def test_tile_slide_on_generated_slide(small_svs, tmp_path):
    out = tmp_path / "tiles.parquet"
    proc = _tile_slide("--slide", small_svs, "--out", out)
    assert proc.returncode == 0, proc.stderr
    grid = read_tile_grid(out)
    assert grid.meta["target_mpp"] == 1.0 and grid.meta["level"] == 0 and grid.meta["tile_size_level0"] == 448
    # the blob covers the centre (1024, 768); glass corners are never tiled
    assert len(grid) >= 1
    centres_x, centres_y = grid.x + 224, grid.y + 224
    assert ((centres_x - 1024) ** 2 / 700**2 + (centres_y - 768) ** 2 / 500**2 <= 1.2).all()


def test_tile_slide_on_real_skin_covers_tissue_not_glass(shared_data, tmp_path):
    from pipeline.slides.reader import open_slide

    out = tmp_path / "cmu.parquet"
    proc = _tile_slide("--slide", shared_data / "slides" / "cmu_small_region.svs", "--out", out)
    assert proc.returncode == 0, proc.stderr
    grid = read_tile_grid(out)
    assert grid.meta["target_mpp"] == 1.0 and grid.meta["effective_mpp"] == pytest.approx(1.0, abs=0.01)
    assert len(grid) >= 8
    with open_slide(shared_data / "slides" / "cmu_small_region.svs") as s:
        means = [s.read_tile(x, y, 224, 1.0).mean() for x, y in zip(grid.x, grid.y, strict=True)]
    assert max(means) < 225  # no tile is mostly glass (glass reads ~240)


def test_tile_slide_without_mpp_names_override_then_works(shared_data, tmp_path):
    slide = shared_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
    proc = _tile_slide("--slide", slide, "--out", tmp_path / "t.parquet")
    assert proc.returncode == 2
    assert "`mpp` column" in proc.stderr and "--mpp" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = _tile_slide("--slide", slide, "--mpp", "1.0", "--out", tmp_path / "t.parquet")
    assert proc.returncode == 0, proc.stderr
    assert len(read_tile_grid(tmp_path / "t.parquet")) > 20
