"""Synthetic whole-slide images with ground truth (CLI verb ``make-slides``).

Writes pyramidal tiled TIFFs that OpenSlide opens with an MPP and objective power:

* ``svs``: Aperio-style (JPEG tiles, ImageDescription ``Aperio Image Library ...|AppMag = 20|MPP = 0.5``,
  4x reduced levels, a thumbnail as the second directory; optionally a label and a macro image and identifying
  properties, so the privacy tests have something to leak);
* ``tiff``: a generic tiled TIFF with resolution tags (OpenSlide's generic-tiff vendor).

Slides are rendered in bands of level-0 rows by :mod:`pipeline.synth_tissue` (in worker processes) and
encoded as they come: level 0 goes straight into the file, the reduced levels are accumulated on disk in raw
temporary files and written afterwards, so memory is bounded by one band (width x 512 px), not the slide.
The same seed gives byte-identical files. Beside each slide: ``<name>.truth.json`` (what was drawn: classes,
stain, expression) and ``<name>.truth.png`` (class map, one grey level per class id, at ``labels_um_per_px``;
level-0 pixel (x, y) is label pixel (x * mpp / labels_um_per_px, y * mpp / labels_um_per_px)).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path, write_json
from pipeline.errors import TriageError
from pipeline.synth_tissue import (  # noqa: F401  (re-exported for pipeline.train_data)
    CLASSES,
    COARSE,
    COMPARTMENT,
    EXPRESSION,
    LAYOUTS,
    TUMOUR_CLASSES,
    Layout,
    Stain,
    make_layout,
    render_patch,
    render_region,
)

TILE_PX = 256
BAND_PX = 512  # level-0 rows rendered at a time (a multiple of the tile and of 4^3)
CHUNK_PX = 2048  # rendered px per column chunk of a band
VERSION = 1

# The sample cohort: (case, slide, layout, stain, format). One layout seed per case: its IHC slides show
# exactly the cells of its H&E slide.
SAMPLE_COHORT = (
    ("A", "A-HE", "breast_duct_carcinoma", "HE", "svs"),
    ("A", "A-CK_AE1AE3", "breast_duct_carcinoma", "CK_AE1AE3", "svs"),
    ("A", "A-ER", "breast_duct_carcinoma", "ER", "svs"),
    ("A", "A-desmin", "breast_duct_carcinoma", "desmin", "svs"),
    ("B", "B-HE", "cervical_squamous_carcinoma", "HE", "svs"),
    ("B", "B-CK_AE1AE3", "cervical_squamous_carcinoma", "CK_AE1AE3", "svs"),
    ("B", "B-p40", "cervical_squamous_carcinoma", "p40", "svs"),
    ("C", "C-HE", "leiomyosarcoma", "HE", "svs"),
    ("C", "C-desmin", "leiomyosarcoma", "desmin", "svs"),
    ("C", "C-CK_AE1AE3", "leiomyosarcoma", "CK_AE1AE3", "svs"),
    ("D", "D-HE", "benign_soft_tissue", "HE", "tif"),
)
SAMPLE_SIZE_PX = (6000, 4800)  # 3.0 x 2.4 mm at 0.5 um/px
SAMPLE_MPP = 0.5
CASE_TRUTH = {"breast_duct_carcinoma": ("carcinoma", "favours metastatic carcinoma"),
              "cervical_squamous_carcinoma": ("carcinoma", "favours metastatic carcinoma"),
              "leiomyosarcoma": ("sarcoma", "favours sarcoma"),
              "pleomorphic_sarcoma": ("sarcoma", "favours sarcoma"),
              "benign_soft_tissue": ("no_tumour", "no tumour")}
# fake identifiers written into the sample SVS files (never real people): outputs must never show them
FAKE_IDENTIFIERS = {"Filename": "SMITH_JANE_1961-03-02_S26-4411", "User": "jdoe-histolab",
                    "Date": "11/24/26", "Time": "09:13:37", "ScanScope ID": "SS12345"}


# ---- rendering workers ----------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(layout: Layout, stain: Stain, spec: dict) -> None:
    _WORKER.update(layout=layout, stain=stain, spec=spec)


def _grain(spec: dict) -> np.ndarray:
    rng = np.random.default_rng([spec["seed"], 404])
    return rng.integers(-3, 4, size=(256, 256, 3), dtype=np.int16)


def render_band(band: int) -> np.ndarray:
    """Level-0 rows [band * BAND_PX, (band + 1) * BAND_PX) over the padded width, uint8 RGB."""
    layout, stain, spec = _WORKER["layout"], _WORKER["stain"], _WORKER["spec"]
    mpp, f, width_pad = spec["mpp"], spec["factor"], spec["width_pad"]
    r_mpp = mpp * f
    rows = BAND_PX // f
    pad = 2  # render rows beyond the band so the upsampling has neighbours (seamless bands)
    y0_um = band * BAND_PX * mpp - pad * r_mpp
    # columns of at most CHUNK_PX rendered px at a time: memory is bounded by the chunk, not the slide's width
    # (rendering is a pure function of position, so the chunks join without seams)
    nx = width_pad // f
    img = np.concatenate([render_region(layout, stain, x * r_mpp, y0_um, min(CHUNK_PX, nx - x), rows + 2 * pad, r_mpp)
                          for x in range(0, nx, CHUNK_PX)], axis=1)
    if f > 1:
        from PIL import Image

        big = Image.fromarray(img).resize((width_pad, (rows + 2 * pad) * f), Image.Resampling.BILINEAR)
        img = np.asarray(big)[pad * f: pad * f + BAND_PX]
        grain = _grain(spec)
        reps = (BAND_PX // 256, width_pad // 256, 1)
        img = np.clip(img.astype(np.int16) + np.tile(grain, reps), 0, 255).astype(np.uint8)
    else:  # rendered at level 0: drop the padding rows as well
        img = img[pad: pad + BAND_PX]
    return np.ascontiguousarray(img)


def _downsample4(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    h4, w4 = -(-h // 4) * 4, -(-w // 4) * 4
    if (h4, w4) != (h, w):
        img = np.pad(img, ((0, h4 - h), (0, w4 - w), (0, 0)), mode="edge")
    s = img.reshape(h4 // 4, 4, w4 // 4, 4, 3).astype(np.uint16).sum(axis=(1, 3))
    return ((s + 8) // 16).astype(np.uint8)


def _render_factor(mpp: float, render_mpp: float | None) -> int:
    target = render_mpp if render_mpp else 1.0
    return max(1, int(round(target / mpp)))


def level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """Level dimensions: 4x reductions while the level's longer side stays >= 512 px (at most 4 levels)."""
    sizes = [(width, height)]
    while len(sizes) < 4 and max(sizes[-1]) // 4 >= 512:
        w, h = sizes[-1]
        sizes.append((-(-w // 4), -(-h // 4)))
    return sizes


# ---- writing --------------------------------------------------------------------------------------------
def _tiles_from_band(band: np.ndarray, width: int):
    """Row-major TILE_PX tiles of a band whose height is a multiple of TILE_PX (edge tiles padded)."""
    for y in range(0, band.shape[0], TILE_PX):
        for x in range(0, width, TILE_PX):
            tile = band[y:y + TILE_PX, x:x + TILE_PX]
            if tile.shape[1] < TILE_PX:
                tile = np.pad(tile, ((0, 0), (0, TILE_PX - tile.shape[1]), (0, 0)), mode="edge")
            yield tile


def _raw_tiles(raw_path: Path, width: int, height: int):
    """Tiles (row-major) of a raw RGB file of ``width`` x (>= ``height``) px, one tile row in memory."""
    stride = width * 3
    with open(raw_path, "rb") as fh:
        for y in range(0, height, TILE_PX):
            n = min(TILE_PX, height - y)
            fh.seek(y * stride)
            rows = np.frombuffer(fh.read(n * stride), np.uint8).reshape(n, width, 3)
            if n < TILE_PX:
                rows = np.pad(rows, ((0, TILE_PX - n), (0, 0), (0, 0)), mode="edge")
            yield from _tiles_from_band(rows, width)


def _label_image(seed: int) -> np.ndarray:
    """A slide label with a barcode-like pattern and blocks of 'handwriting' (fake; must never be exported)."""
    rng = np.random.default_rng([seed, 505])
    img = np.full((400, 360, 3), 250, np.uint8)
    bars = rng.integers(0, 2, 60).repeat(4)
    img[40:160, 60:300] = np.where(bars[:240] > 0, 10, 250)[None, :, None]
    for k in range(4):
        img[200 + 40 * k: 225 + 40 * k, 40:40 + int(rng.integers(120, 280))] = 30
    return img


def write_slide(path: str | os.PathLike, *, width: int, height: int, mpp: float = 0.25, seed: int = 0,
                stain: str = "HE", layout: str = "mixed", fmt: str = "svs", tissue_fraction: float = 0.4,
                layout_seed: int | None = None, artefacts: tuple[str, ...] = (), identifiers: bool = False,
                quality: int = 85, workers: int = 1, render_mpp: float | None = None, truth: bool = True) -> dict:
    """Write one synthetic slide (and its truth files); returns the truth record. Deterministic per arguments."""
    import tifffile

    path = Path(path)
    fmt = "tiff" if fmt in ("tif", "tiff") else fmt
    if fmt not in ("svs", "tiff"):
        raise TriageError(f"unknown slide format {fmt!r}: use svs or tif")
    if layout not in LAYOUTS:
        raise TriageError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if stain != "HE" and stain not in COMPARTMENT:
        raise TriageError(f"unknown stain {stain!r} for the generator: use HE or one of {', '.join(COMPARTMENT)}")
    if width < 256 or height < 256 or not 0.05 <= mpp <= 10:
        raise TriageError(f"slide size {width}x{height} px at {mpp} um/px is out of range (>= 256 px, 0.05-10 um/px)")
    layout_seed = seed if layout_seed is None else layout_seed
    lay = make_layout(layout_seed, width * mpp, height * mpp, layout, tissue_fraction, tuple(artefacts))
    stain_params = Stain.for_slide(stain, seed)
    f = _render_factor(mpp, render_mpp)
    width_pad = -(-width // (TILE_PX * f)) * TILE_PX * f
    spec = {"mpp": mpp, "factor": f, "width_pad": width_pad, "seed": seed}
    sizes = level_sizes(width, height)
    n_bands = -(-height // BAND_PX)
    mag = 40 if mpp < 0.375 else 20 if mpp < 0.75 else 10
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.levels.") as tmpdir, \
            atomic_path(path) as tmp:
        raws = [Path(tmpdir) / f"level{k}.raw" for k in range(len(sizes))]
        raw_fhs = [open(r, "wb") for r in raws[1:]]  # noqa: SIM115 (closed in finally, after level 0)
        try:
            with tifffile.TiffWriter(tmp, bigtiff=width * height * 3 > 3_500_000_000) as tw:
                common = {"photometric": "rgb", "metadata": None, "software": False}
                jpeg = {"compression": "jpeg", "compressionargs": {"level": quality}}

                def level0_tiles():
                    _init_worker(lay, stain_params, spec)
                    if workers > 1:
                        ctx = ProcessPoolExecutor(workers, initializer=_init_worker,
                                                  initargs=(lay, stain_params, spec))
                    else:
                        ctx = None
                    try:
                        pending = []
                        nxt = 0
                        for b in range(n_bands):
                            while ctx is not None and nxt < n_bands and len(pending) < workers + 1:
                                pending.append(ctx.submit(render_band, nxt))
                                nxt += 1
                            band = pending.pop(0).result() if ctx is not None else render_band(b)
                            lvl = band[:, :width]
                            for k, fh in enumerate(raw_fhs, start=1):
                                lvl = _downsample4(lvl)
                                keep = min(lvl.shape[0], max(0, sizes[k][1] - b * BAND_PX // 4 ** k))
                                fh.write(np.ascontiguousarray(lvl[:keep, :sizes[k][0]]).tobytes())
                            yield from _tiles_from_band(band, width)  # tile rows beyond the slide: dropped
                    finally:
                        if ctx is not None:
                            ctx.shutdown(cancel_futures=True)

                desc0 = _description(fmt, width, height, mpp, mag, quality, identifiers)
                n_tile_rows = -(-height // TILE_PX)

                def level0_trimmed():
                    per_row = -(-width // TILE_PX)
                    for i, tile in enumerate(level0_tiles()):
                        if i // per_row < n_tile_rows:
                            yield tile

                kw = dict(common, **jpeg, tile=(TILE_PX, TILE_PX), description=desc0)
                if fmt == "tiff":
                    kw.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
                tw.write(level0_trimmed(), shape=(height, width, 3), dtype=np.uint8, **kw)
                for fh in raw_fhs:
                    fh.close()
                if fmt == "svs":  # thumbnail: the second directory, stripped
                    lw, lh = sizes[-1]
                    small = np.fromfile(raws[-1], np.uint8)[: lw * lh * 3].reshape(lh, lw, 3) \
                        if len(sizes) > 1 else None
                    thumb = _thumbnail(small, width, height)
                    tw.write(thumb, description=f"Aperio Image Library v12.0.16 \r\n{width}x{height} -> "
                                                f"{thumb.shape[1]}x{thumb.shape[0]} - ", rowsperstrip=16,
                             **common, **jpeg)
                for k in range(1, len(sizes)):
                    lw, lh = sizes[k]
                    kw = dict(common, **jpeg, tile=(TILE_PX, TILE_PX))
                    if fmt == "svs":
                        kw["description"] = (f"Aperio Image Library v12.0.16 \r\n{width}x{height} [0,0 {width}x"
                                             f"{height}] ({TILE_PX}x{TILE_PX}) -> {lw}x{lh} JPEG/RGB Q={quality}")
                    else:
                        ds = width / lw
                        kw.update(subfiletype=1, resolution=(1e4 / (mpp * ds), 1e4 / (mpp * ds)),
                                  resolutionunit="CENTIMETER")
                    tw.write(_raw_tiles(raws[k], lw, lh), shape=(lh, lw, 3), dtype=np.uint8, **kw)
                if fmt == "svs" and identifiers:
                    label = _label_image(seed)
                    tw.write(label, description=f"Aperio Image Library v12.0.16\r\nlabel {label.shape[1]}x"
                                                f"{label.shape[0]}", compression="lzw", subfiletype=1,
                             rowsperstrip=64, photometric="rgb", metadata=None, software=False)
                    macro = np.concatenate([label, np.full((400, 900, 3), 235, np.uint8)], axis=1)
                    tw.write(macro, description=f"Aperio Image Library v12.0.16\r\nmacro {macro.shape[1]}x"
                                                f"{macro.shape[0]}", subfiletype=9, rowsperstrip=16,
                             **common, **jpeg)
        finally:
            for fh in raw_fhs:
                if not fh.closed:
                    fh.close()
    seconds = time.perf_counter() - t0
    record = {
        "generator": "pipeline.synth", "version": VERSION, "slide": path.name, "format": fmt, "stain": stain,
        "layout": layout, "seed": seed, "layout_seed": layout_seed, "mpp": mpp, "objective_power": mag,
        "width": width, "height": height, "levels": [list(s) for s in sizes], "artefacts": list(artefacts),
        "labels_png": f"{path.name}.truth.png" if truth else None, "labels_um_per_px": lay.layout_um,
        "classes": list(CLASSES), "class_fractions": lay.class_fractions(),
        "expression": expression_truth(stain, lay) if stain != "HE" else {},
        "decision_support": "synthetic test data, not a patient's slide",
    }
    if truth:
        _write_truth(path, record, lay)
    record["write_seconds"] = round(seconds, 2)
    return record


def _description(fmt, width, height, mpp, mag, quality, identifiers) -> str:
    if fmt == "tiff":
        return f"slide-triage synthetic slide {width}x{height} at {mpp} um/px"
    desc = (f"Aperio Image Library v12.0.16 \r\n{width}x{height} [0,0 {width}x{height}] ({TILE_PX}x{TILE_PX}) "
            f"JPEG/RGB Q={quality}|AppMag = {mag}|MPP = {mpp}")
    if identifiers:
        desc += "".join(f"|{k} = {v}" for k, v in FAKE_IDENTIFIERS.items())
    return desc


def _thumbnail(small: np.ndarray | None, width: int, height: int, max_px: int = 768) -> np.ndarray:
    from PIL import Image

    scale = max_px / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if small is None:
        return np.full((size[1], size[0], 3), 240, np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BOX))


def expression_truth(marker: str, lay: Layout) -> dict:
    """What an IHC slide shows: per tissue class present, the fraction of positive cells and the intensity."""
    out = {}
    for name, share in lay.class_fractions().items():
        frac, level = EXPRESSION.get(name, {}).get(marker, (0.0, 0))
        out[name] = {"positive_fraction": frac, "intensity": level, "tissue_share": share}
    return out


def _write_truth(path: Path, record: dict, lay: Layout) -> None:
    from PIL import Image

    write_json(Path(f"{path}.truth.json"), record)
    with atomic_path(Path(f"{path}.truth.png")) as tmp:
        Image.fromarray(lay.labels).save(tmp, format="PNG")


def _write_job(job: dict) -> dict:
    return write_slide(**job)


# ---- the sample cohort ------------------------------------------------------------------------------------
def _sources_hash() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in ("synth.py", "synth_tissue.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def expected_slide_result(layout: str, stain: str) -> tuple[str, float, int]:
    """(expected call, % positive tumour cells, intensity) of a slide of ``layout`` stained with ``stain``."""
    if stain == "HE":
        return CASE_TRUTH[layout][0], 0.0, 0
    tumour = list(LAYOUTS[layout]["tumour"])
    if not tumour:
        return "negative", 0.0, 0
    frac, level = EXPRESSION.get(tumour[0], {}).get(stain, (0.0, 0))
    return ("positive" if frac >= 0.5 else "negative"), round(100 * frac, 1), level


def make_cohort(out: str | os.PathLike, workers: int = 2, force: bool = False) -> list[dict]:
    """Write the sample cohort to ``out`` (skipped when its .stamp matches this generator) and truth.tsv."""
    out = Path(out)
    stamp = out / ".stamp"
    key = f"{VERSION} {_sources_hash()} {SAMPLE_SIZE_PX} {SAMPLE_MPP}"
    names = [f"{slide}.{fmt}" for _, slide, _, _, fmt in SAMPLE_COHORT]
    if not force and stamp.is_file() and stamp.read_text().strip() == key and all((out / n).is_file() for n in names):
        print(f"sample cohort in {out} is up to date ({len(names)} slides)")
        return []
    out.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    case_seed = {c: 1000 + i for i, c in enumerate(sorted({row[0] for row in SAMPLE_COHORT}))}
    t0 = time.perf_counter()
    jobs = [dict(path=out / f"{slide}.{fmt}", width=SAMPLE_SIZE_PX[0], height=SAMPLE_SIZE_PX[1], mpp=SAMPLE_MPP,
                 seed=case_seed[case] * 100 + i, layout_seed=case_seed[case], stain=stain, layout=layout, fmt=fmt,
                 tissue_fraction=0.45, identifiers=(fmt == "svs"))
            for i, (case, slide, layout, stain, fmt) in enumerate(SAMPLE_COHORT)]
    records = []
    with ProcessPoolExecutor(max(1, workers)) as pool:  # one slide per process: encoding runs in parallel too
        for (case, slide, *_), rec in zip(SAMPLE_COHORT, pool.map(_write_job, jobs), strict=True):
            print(f"{rec['slide']}: {rec['width']}x{rec['height']} px, {rec['stain']}, {rec['layout']}, "
                  f"{rec['write_seconds']} s")
            records.append(dict(rec, case_id=case, slide_id=slide))
    with atomic_path(out / "truth.tsv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["case_id", "slide_id", "stain", "layout", "expected_slide_call", "tumour_positive_pct",
                    "tumour_intensity", "expected_case_call"])
        for case, slide, layout, stain, _ in SAMPLE_COHORT:
            call, pct, level = expected_slide_result(layout, stain)
            w.writerow([case, slide, stain, layout, call, pct, level, CASE_TRUTH[layout][1]])
    stamp.write_text(key + "\n")
    print(f"wrote {len(records)} slides to {out} in {time.perf_counter() - t0:.1f} s (synthetic, not patient data)")
    return records


# ---- CLI --------------------------------------------------------------------------------------------------
def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 60000x40000, got {text!r}") from None
    return w, h


def configure_parser(parser) -> None:
    parser.add_argument("--cohort", choices=["sample"], help="write the named cohort into --out (a folder)")
    parser.add_argument("--out", required=True, help="output folder (--cohort) or slide file (.svs / .tif)")
    parser.add_argument("--size", type=_size, default=(20000, 20000), help="WxH in level-0 px (one slide)")
    parser.add_argument("--mpp", type=float, default=0.25, help="um/px at level 0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stain", default="HE", help="HE or an IHC marker (e.g. CK_AE1AE3, ER, desmin, p40)")
    parser.add_argument("--layout", default="mixed", choices=sorted(LAYOUTS))
    parser.add_argument("--tissue-fraction", type=float, default=0.4)
    parser.add_argument("--artefact", action="append", default=[], choices=["pen", "blur", "fold", "bubble"])
    parser.add_argument("--identifiers", action="store_true",
                        help="add a fake label, macro and identifying properties (privacy tests)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--force", action="store_true", help="rewrite the cohort even when up to date")
    parser.add_argument("--contact-sheet", metavar="PNG",
                        help="after writing: a contact sheet of the cohort (thumbnails + 1 um/px class tiles)")


def run(args) -> None:
    if args.cohort:
        make_cohort(args.out, workers=args.workers, force=args.force)
        if args.contact_sheet:
            print(f"contact sheet: {contact_sheet(args.out, args.contact_sheet)}")
        return
    out = Path(args.out)
    fmt = "svs" if out.suffix.lower() == ".svs" else "tiff"
    w, h = args.size
    rec = write_slide(out, width=w, height=h, mpp=args.mpp, seed=args.seed, stain=args.stain, layout=args.layout,
                      fmt=fmt, tissue_fraction=args.tissue_fraction, artefacts=tuple(args.artefact),
                      identifiers=args.identifiers, workers=args.workers)
    print(json.dumps({k: rec[k] for k in ("slide", "width", "height", "mpp", "stain", "layout", "write_seconds")}))


# ---- contact sheet ----------------------------------------------------------------------------------------
def contact_sheet(folder: str | os.PathLike, out: str | os.PathLike, tile_um: float = 256.0) -> Path:
    """One PNG: per slide of a generated cohort, its thumbnail and a 1.0 um/px tile from each drawn class."""
    import openslide
    from PIL import Image, ImageDraw
    from scipy import ndimage

    folder = Path(folder)
    rows = []
    for truth_path in sorted(folder.glob("*.truth.json")):
        rec = json.loads(truth_path.read_text())
        slide = openslide.OpenSlide(str(folder / rec["slide"]))
        labels = np.asarray(Image.open(folder / rec["labels_png"]))
        side = int(tile_um)
        cells = [np.asarray(slide.get_thumbnail((side, side)).convert("RGB"))]
        names = ["thumbnail"]
        for cid in np.unique(labels):
            if cid == 0:
                continue
            # label pixels at least half a tile inside the class region
            half_tile = max(1, int(tile_um / rec["labels_um_per_px"]) // 2)
            inner = ndimage.binary_erosion(labels == cid, iterations=half_tile)
            ys, xs = np.nonzero(inner)
            if not len(ys):
                continue
            k = len(ys) // 2
            um = rec["labels_um_per_px"]
            x0 = int((xs[k] * um - tile_um / 2) / rec["mpp"])
            y0 = int((ys[k] * um - tile_um / 2) / rec["mpp"])
            region = slide.read_region((max(0, x0), max(0, y0)), 0, (int(tile_um / rec["mpp"]),) * 2).convert("RGB")
            cells.append(np.asarray(region.resize((side, side), Image.Resampling.BOX)))
            names.append(CLASSES[cid])
        row = Image.new("RGB", (side * 6, side + 18), "white")
        draw = ImageDraw.Draw(row)
        for j, (img, name) in enumerate(zip(cells[:6], names[:6], strict=True)):
            pad = np.full((side, side, 3), 255, np.uint8)
            pad[: img.shape[0], : img.shape[1]] = img
            row.paste(Image.fromarray(pad), (j * side, 18))
            draw.text((j * side + 4, 3), f"{rec['slide']} {rec['stain']}: {name}" if j == 0 else name, fill="black")
        rows.append(row)
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    out = Path(out)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out

