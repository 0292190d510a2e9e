"""The directories of a synthetic slide file: Aperio-style SVS or a generic tiled TIFF (tifffile).

* ``svs``: JPEG tiles, ImageDescription ``Aperio Image Library ...|AppMag = 20|MPP = 0.5``, 4x reduced levels,
  a thumbnail as the second directory; optionally a label and a macro image and identifying properties
  (:data:`FAKE_IDENTIFIERS`, never real people), so the privacy tests have something to leak;
* ``tiff``: a generic tiled TIFF with resolution tags (OpenSlide's generic-tiff vendor).

Public: :class:`TiffSpec` (format, size, um/px, power, JPEG quality) with :meth:`TiffSpec.write_level0`,
:meth:`TiffSpec.write_thumbnail`, :meth:`TiffSpec.write_reduced_level` and :meth:`TiffSpec.write_label_and_macro`;
:func:`objective_power`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pipeline.synth.pyramid import TILE_PX

# fake identifiers written into the sample SVS files (never real people): outputs must never show them
FAKE_IDENTIFIERS = {"Filename": "SMITH_JANE_1961-03-02_S26-4411", "User": "jdoe-histolab",
                    "Date": "11/24/26", "Time": "09:13:37", "ScanScope ID": "SS12345"}
_COMMON = {"photometric": "rgb", "metadata": None, "software": False}


def objective_power(mpp: float) -> int:
    """The scanner objective a level-0 um/px stands for (40x below 0.375 um/px, 20x below 0.75, else 10x)."""
    return 40 if mpp < 0.375 else 20 if mpp < 0.75 else 10


def _label_image(seed: int) -> np.ndarray:
    """A slide label with a barcode-like pattern and blocks of 'handwriting' (fake; must never be exported)."""
    rng = np.random.default_rng([seed, 505])
    img = np.full((400, 360, 3), 250, np.uint8)
    bars = rng.integers(0, 2, 60).repeat(4)
    img[40:160, 60:300] = np.where(bars[:240] > 0, 10, 250)[None, :, None]
    for k in range(4):
        img[200 + 40 * k: 225 + 40 * k, 40:40 + int(rng.integers(120, 280))] = 30
    return img


def _thumbnail(small: np.ndarray | None, width: int, height: int, max_px: int = 768) -> np.ndarray:
    from PIL import Image

    scale = max_px / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if small is None:
        return np.full((size[1], size[0], 3), 240, np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BOX))


@dataclass(frozen=True)
class TiffSpec:
    """How a slide file is written: ``fmt`` ("svs" or "tiff"), level-0 size (px), um/px, power, JPEG quality."""

    fmt: str
    width: int
    height: int
    mpp: float
    quality: int = 85
    identifiers: bool = False

    @property
    def _jpeg(self) -> dict:
        return {"compression": "jpeg", "compressionargs": {"level": self.quality}}

    def description(self) -> str:
        """Level 0's ImageDescription (the Aperio header with AppMag and MPP for svs)."""
        width, height, mpp = self.width, self.height, self.mpp
        if self.fmt == "tiff":
            return f"slide-triage synthetic slide {width}x{height} at {mpp} um/px"
        desc = (f"Aperio Image Library v12.0.16 \r\n{width}x{height} [0,0 {width}x{height}] ({TILE_PX}x{TILE_PX}) "
                f"JPEG/RGB Q={self.quality}|AppMag = {objective_power(mpp)}|MPP = {mpp}")
        if self.identifiers:
            desc += "".join(f"|{k} = {v}" for k, v in FAKE_IDENTIFIERS.items())
        return desc

    def write_level0(self, tw, tiles: Iterable[np.ndarray]) -> None:
        """Level 0 from its tiles (row-major), the first directory."""
        kw = dict(_COMMON, **self._jpeg, tile=(TILE_PX, TILE_PX), description=self.description())
        if self.fmt == "tiff":
            kw.update(resolution=(1e4 / self.mpp, 1e4 / self.mpp), resolutionunit="CENTIMETER")
        tw.write(tiles, shape=(self.height, self.width, 3), dtype=np.uint8, **kw)

    def write_thumbnail(self, tw, small: np.ndarray | None) -> None:
        """The SVS thumbnail (second directory, stripped) from the smallest level (None: a blank one)."""
        width, height = self.width, self.height
        thumb = _thumbnail(small, width, height)
        tw.write(thumb, description=f"Aperio Image Library v12.0.16 \r\n{width}x{height} -> "
                                    f"{thumb.shape[1]}x{thumb.shape[0]} - ", rowsperstrip=16,
                 **_COMMON, **self._jpeg)

    def write_reduced_level(self, tw, tiles: Iterable[np.ndarray], size: tuple[int, int]) -> None:
        """A reduced level of ``size`` (w, h) px from its tiles (row-major)."""
        width, height = self.width, self.height
        lw, lh = size
        kw = dict(_COMMON, **self._jpeg, tile=(TILE_PX, TILE_PX))
        if self.fmt == "svs":
            kw["description"] = (f"Aperio Image Library v12.0.16 \r\n{width}x{height} [0,0 {width}x"
                                 f"{height}] ({TILE_PX}x{TILE_PX}) -> {lw}x{lh} JPEG/RGB Q={self.quality}")
        else:
            ds = width / lw
            kw.update(subfiletype=1, resolution=(1e4 / (self.mpp * ds), 1e4 / (self.mpp * ds)),
                      resolutionunit="CENTIMETER")
        tw.write(tiles, shape=(lh, lw, 3), dtype=np.uint8, **kw)

    def write_label_and_macro(self, tw, seed: int) -> None:
        """The SVS label (LZW) and macro (JPEG) images: a fake barcode and handwriting."""
        label = _label_image(seed)
        tw.write(label, description=f"Aperio Image Library v12.0.16\r\nlabel {label.shape[1]}x"
                                    f"{label.shape[0]}", compression="lzw", subfiletype=1,
                 rowsperstrip=64, photometric="rgb", metadata=None, software=False)
        macro = np.concatenate([label, np.full((400, 900, 3), 235, np.uint8)], axis=1)
        tw.write(macro, description=f"Aperio Image Library v12.0.16\r\nmacro {macro.shape[1]}x"
                                    f"{macro.shape[0]}", subfiletype=9, rowsperstrip=16,
                 **_COMMON, **self._jpeg)
