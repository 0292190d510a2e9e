"""Shared test fixtures: small generated pyramidal slides with known MPP, and the real reference data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real slides and patches); tests using it skip where it is absent (a user's clone)."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real reference data not found at {SHARED_DATA} (present in CI; absent in a fresh clone)")
    return SHARED_DATA


def blob_image(width: int, height: int, seed: int = 0, tissue_rgb=(200, 120, 170)) -> np.ndarray:
    """White glass with one elliptical stained blob (covering ~30 % of the image) and nuclei-like dots."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    cx, cy, rx, ry = width * 0.5, height * 0.5, width * 0.33, height * 0.3
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    img = np.full((height, width, 3), 242, np.uint8)
    img[inside] = tissue_rgb
    noise = rng.integers(-12, 12, size=(height, width, 1))
    img = np.clip(img.astype(np.int16) + noise * inside[..., None], 0, 255).astype(np.uint8)
    dots = inside & (rng.random((height, width)) < 0.01)
    img[dots] = (70, 50, 140)
    return img


def write_pyramid_tiff(path: Path, image: np.ndarray, mpp: float | None, levels: int = 2,
                       aperio: bool = False, tile: int = 256, compression: str = "jpeg") -> Path:
    """Write ``image`` as a tiled pyramidal TIFF: Aperio-style SVS or generic TIFF with resolution tags."""
    import tifffile

    from pipeline.slides.slide import resize_rgb

    pyramid = [image]
    for _ in range(1, levels):
        prev = pyramid[-1]
        pyramid.append(resize_rgb(prev, max(1, prev.shape[1] // 4), max(1, prev.shape[0] // 4)))
    h, w = image.shape[:2]
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        for i, level in enumerate(pyramid):
            kwargs = {"tile": (tile, tile), "compression": compression, "photometric": "rgb", "metadata": None}
            if aperio:
                desc = f"Aperio Image Library v12.0.0 \r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=90"
                if mpp is not None:
                    desc += f"|AppMag = 20|MPP = {mpp}"
                kwargs["description"] = desc if i == 0 else f"{w}x{h} -> {level.shape[1]}x{level.shape[0]}"
            elif mpp is not None:
                ds = w / level.shape[1]
                kwargs["resolution"] = (1e4 / (mpp * ds), 1e4 / (mpp * ds))
                kwargs["resolutionunit"] = "CENTIMETER"
            if i > 0 and not aperio:
                kwargs["subfiletype"] = 1
            tw.write(level, **kwargs)
    return path


@pytest.fixture
def small_slide(tmp_path) -> Path:
    """A 1536 x 1024 generic tiled TIFF at 0.5 um/px with two levels and one tissue blob."""
    return write_pyramid_tiff(tmp_path / "small.tif", blob_image(1536, 1024), mpp=0.5, levels=2)


@pytest.fixture
def small_svs(tmp_path) -> Path:
    """A 2048 x 1536 Aperio-style SVS at 0.5 um/px with three levels (0.5, 2, 8 um/px)."""
    return write_pyramid_tiff(tmp_path / "small.svs", blob_image(2048, 1536, seed=1), mpp=0.5, levels=3,
                              aperio=True)


# ---- the workflow on the sample cohort --------------------------------------------------------------
SAMPLE_SHEET = ROOT / "configs" / "samples.tsv"


def absolute_sheet(dest: Path, source: Path = SAMPLE_SHEET, keep=None, extra_rows=()) -> Path:
    """Copy a sample sheet with paths made absolute (relative paths resolve against the repo root)."""
    import csv

    with open(source, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if keep is not None:
        rows = [r for r in rows if keep(r)]
    for r in rows:
        r["path"] = str((ROOT / r["path"]).resolve())
    rows += [dict(r) for r in extra_rows]
    with open(dest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["case_id", "slide_id", "path", "stain", "mpp"], delimiter="\t",
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return dest


def snakemake_cmd(workdir: Path, sheet: Path, *extra: str, cores: int = 2) -> list[str]:
    """The workflow command for a run in ``workdir`` (results/, logs/, benchmarks/ all land there)."""
    import sys

    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
            "--directory", str(workdir), "--configfile", str(ROOT / "configs" / "config.yaml"),
            "--config", f"samples={sheet}", f"markers={ROOT / 'configs' / 'markers.yaml'}",
            f"model={ROOT / 'models' / MODEL_DIR_NAME}",
            "--cores", str(cores), "--keep-going", "--quiet", "rules", *extra]


def _default_model_dir_name() -> str:
    from pipeline.config import load_schema

    return Path(load_schema("config")["properties"]["model"]["default"]).name


MODEL_DIR_NAME = _default_model_dir_name()


def require_sample_cohort() -> None:
    if not SAMPLE_SHEET.is_file() or not (ROOT / "slides_sample" / ".stamp").is_file():
        pytest.skip("sample cohort not generated: run `make slides` (make test does it first)")


@pytest.fixture(scope="session")
def cohort_run(tmp_path_factory) -> Path:
    """One clean workflow run on the whole sample cohort; returns its work directory."""
    import subprocess

    require_sample_cohort()
    workdir = tmp_path_factory.mktemp("cohort_run")
    sheet = absolute_sheet(workdir / "samples.tsv")
    proc = subprocess.run(snakemake_cmd(workdir, sheet), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir
