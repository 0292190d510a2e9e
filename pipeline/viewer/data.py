"""What the viewer may show of a finished run: its slides (by id, from the run's sample sheet) and their evidence.

A :class:`Cohort` is built once from a results folder. The slides it knows are exactly the rows of the sample
sheet the run used (``results/config.yaml`` records its path, relative to the run's working directory; ``--samples``
overrides it); a URL names a slide by its ``slide_id`` only, and the file path comes from the sheet, never from a
request. Slides are opened lazily with :func:`pipeline.slides.reader.open_slide` (the sheet's ``mpp`` override applies)
and kept open for the life of the server.

:func:`overlays` turns a slide's ``tiles.geojson`` (tile squares in level-0 pixels with their class and
measurements, tissue outline) and ``summary.json`` (top tiles, IHC cut-off) into the compact JSON the page draws.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import yaml

from pipeline import atomic
from pipeline.config import load_samples, safe_load
from pipeline.errors import ConfigError, SlideError, TriageError
from pipeline.he.slide_call import CLASSES as HE_CLASSES
from pipeline.outputs.drawing import CLASS_COLOURS as FIGURE_COLOURS
from pipeline.outputs.drawing import COLORMAP
from pipeline.outputs.geojson import IHC_COLOURS, TISSUE_COLOUR
from pipeline.redact import redact
from pipeline.viewer.deepzoom import TileCache, TileSource

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]

# The heatmaps' colour scale: 9 evenly spaced stops of heatmap.png's colour map; tile and tissue colours as in
# the GeoJSON export (QuPath's classes).
COLORMAP_STOPS = COLORMAP[[round(i * 255 / 8) for i in range(9)]].tolist()
CLASS_COLOURS = {**{c: FIGURE_COLOURS[c] for c in HE_CLASSES}, **IHC_COLOURS}
REGION_COLOUR = [0, 150, 255]  # the registered tumour region's outline on IHC slides (not a class colour)


def _workdir(results: Path, recorded: str | None) -> Path:
    """The run's working directory: ``results`` minus the relative results path the run recorded."""
    parts = Path(recorded).parts if recorded and not Path(recorded).is_absolute() else ()
    if parts and results.parts[-len(parts):] == parts:
        return Path(*results.parts[:-len(parts)])
    return Path.cwd()


def run_inputs(results: Path, samples: str | None = None, markers: str | None = None) -> tuple[Path, Path, Path]:
    """(sample sheet, marker file, working directory that relative slide paths start from) of a finished run."""
    results = results.resolve()
    config = {}
    recorded = results / "config.yaml"
    if recorded.is_file():
        try:
            config = safe_load(recorded.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{recorded}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from exc
    workdir = Path.cwd() if samples else _workdir(results, config.get("results"))
    sheet = samples or config.get("samples")
    if not sheet:
        raise ConfigError(f"{results}: no config.yaml naming the run's sample sheet; pass --samples SHEET.tsv")
    marker_file = markers or config.get("markers") or str(ROOT / "configs" / "markers.yaml")
    return workdir / sheet, workdir / marker_file, workdir


class Cohort:
    """The slides and cases of one finished run, and the deep-zoom sources of its slides."""

    def __init__(self, results: Path, samples: str | None = None, markers: str | None = None,
                 cache: TileCache | None = None):
        self.results = Path(results).resolve()
        if not (self.results / "slides").is_dir():
            raise ConfigError(f"{self.results}: no slides/ folder: not the results folder of a run")
        sheet, marker_file, workdir = run_inputs(self.results, samples, markers)
        rows = load_samples(sheet, marker_file, check_files=False)
        self.slides = {r["slide_id"]: {**r, "file": workdir / r["path"]} for r in rows}
        self.cases: dict[str, list[str]] = {}
        for r in rows:
            self.cases.setdefault(r["case_id"], []).append(r["slide_id"])
        self.cache = cache or TileCache()
        self._sources: dict[str, TileSource | str] = {}
        self._lock = threading.Lock()
        log.info("%d slides in %d cases from %s", len(self.slides), len(self.cases), sheet)

    def summary(self, slide_id: str) -> dict | None:
        return atomic.try_read_json(self.results / "slides" / slide_id / "summary.json")

    def case(self, case_id: str) -> dict | None:
        return atomic.try_read_json(self.results / "cases" / case_id / "case.json")

    def case_slides(self, case_id: str) -> list[str]:
        """The case's slides, H&E first, then IHC by stain (the report's order)."""
        ids = self.cases.get(case_id, [])
        return sorted(ids, key=lambda s: (self.slides[s]["stain"] != "HE", self.slides[s]["stain"], s))

    def source(self, slide_id: str) -> TileSource:
        """The slide's tile source, opened on first use; :class:`SlideError` (without its path) if it cannot be."""
        from pipeline.slides.reader import open_slide

        with self._lock:
            src = self._sources.get(slide_id)
            if src is None:
                row = self.slides[slide_id]
                try:
                    src = TileSource(open_slide(row["file"], mpp=row["mpp"]), slide_id, self.cache)
                except TriageError as exc:
                    src = redact(str(exc), row["file"])
                    log.warning("slide %s cannot be shown: %s", slide_id, src)
                self._sources[slide_id] = src
        if isinstance(src, str):
            raise SlideError(src)
        return src

    def geojson(self, slide_id: str) -> dict | None:
        return atomic.try_read_json(self.results / "slides" / slide_id / "tiles.geojson")


def _box(feature: dict) -> list[float]:
    ring = feature["geometry"]["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _rings(geometry: dict) -> list[list[list[float]]]:
    if geometry.get("type") == "Polygon":
        return geometry["coordinates"]
    if geometry.get("type") == "MultiPolygon":
        return [ring for poly in geometry["coordinates"] for ring in poly]
    return []


def _heat_range(measure: str, values: list) -> tuple[float, float]:
    if measure.startswith("prob_"):
        return 0.0, 1.0
    if measure.endswith("_pct"):
        return 0.0, 100.0
    if "h_score" in measure:
        return 0.0, 300.0
    finite = [v for v in values if isinstance(v, (int, float))]
    return 0.0, max(finite, default=1.0) or 1.0


def overlays(summary: dict | None, geojson: dict | None) -> dict:
    """The evidence to draw over a slide, in level-0 pixels: tiles (boxes, classes, heat measures), tissue
    outline rings and top tiles; plus what the legend needs (measure ranges, class colours, IHC cut-off).

    IHC slides also get ``tiles.in_region`` (each tile's ``in_tumour_region``: 1, 0, or null when the marker was not
    read in a tumour region) and ``region`` (whether it was restricted to the registered tumour region, and why)."""
    summary, features = summary or {}, (geojson or {}).get("features", [])
    kind = summary.get("kind")
    result = ((summary.get("ihc") or {}).get("result")) or {}
    region = ((summary.get("ihc") or {}).get("region")) or {}
    measures = [f"prob_{c}" for c in HE_CLASSES] if kind == "HE" else [result["metric"]] if result.get("metric") else []
    tiles = {"box": [], "cls": [], **{m: [] for m in measures}, **({"in_region": []} if kind == "IHC" else {})}
    tissue = []
    for f in features:
        props = f.get("properties") or {}
        if props.get("objectType") == "tile":
            tiles["box"].append(_box(f))
            tiles["cls"].append((props.get("classification") or {}).get("name"))
            values = props.get("measurements") or {}
            for m in measures:
                tiles[m].append(values.get(m))
            if kind == "IHC":
                tiles["in_region"].append(values.get("in_tumour_region"))
        elif (props.get("classification") or {}).get("name") == "Tissue":  # not the tumour region annotation:
            tissue += _rings(f.get("geometry") or {})  # the viewer draws the region from the tiles' in_region
    size0 = float((summary.get("tiles") or {}).get("tile_size_level0_px") or 0)
    top = [{"group": group, "rank": i + 1, "x": t["x"], "y": t["y"], "size": size0, "value": t.get("value"),
            "measure": g.get("measure")}
           for group, g in sorted((summary.get("top_tiles") or {}).items()) for i, t in enumerate(g.get("tiles", []))]
    return {"kind": kind, "tiles": tiles, "tissue": tissue, "top": top,
            "measures": [{"key": m, "range": _heat_range(m, tiles[m])} for m in measures],
            "cutoff": {"metric": result.get("metric"), "value": result.get("cutoff")} if kind == "IHC" else None,
            "region": {"restricted": bool(region.get("restricted_to_tumour")),
                       "reason": region.get("reason") or "no tumour region recorded for this slide"}
            if kind == "IHC" else None,
            "colours": {"classes": CLASS_COLOURS, "tissue": TISSUE_COLOUR, "region": REGION_COLOUR,
                        "colormap": COLORMAP_STOPS}}


def registration(cohort: Cohort, slide_id: str) -> dict | None:
    """An IHC slide's registration onto its case's H&E slide as the viewer uses it, or None when it has none.

    Only what navigation and the page need: status and reason, the H&E slide's id, the 3x3 matrix that maps IHC
    level-0 px to H&E level-0 px, rotation (degrees, clockwise on screen), flip (x mirrored before rotating), scale,
    quality score and residual (um); no path, timing or machine. A status other than "ok", or an H&E slide that is
    not in this run's sheet, leaves ``matrix_level0_px`` None."""
    record = atomic.try_read_json(cohort.results / "slides" / slide_id / "registration.json")
    if not isinstance(record, dict):
        return None
    transform, quality = record.get("transform") or {}, record.get("quality") or {}
    he_id, status, reason = record.get("he_slide_id"), record.get("status"), record.get("reason")
    if status == "ok" and (he_id not in cohort.slides or not transform.get("matrix_level0_px")):
        status, reason = "unusable", "its H&E slide is not in this run's sample sheet or it has no transform"
    usable = {k: transform.get(k) if status == "ok" else None
              for k in ("matrix_level0_px", "rotation_deg", "flip", "scale")}
    return {"status": status, "reason": reason, "he_slide_id": he_id if he_id in cohort.slides else None, **usable,
            "score": quality.get("score"), "residual_median_um": quality.get("residual_median_um"),
            "residual_p95_um": quality.get("residual_p95_um")}


def slide_json(cohort: Cohort, slide_id: str) -> dict:
    """The viewer's JSON for one slide: ids, stain, status, pyramid facts (no slide property), overlays and, for an
    IHC slide, its registration onto the case's H&E slide (:func:`registration`)."""
    row, summary = cohort.slides[slide_id], cohort.summary(slide_id)
    try:
        info, problem = cohort.source(slide_id).info(), None
    except SlideError as exc:
        info, problem = None, str(exc)
    return {"slide_id": slide_id, "case_id": row["case_id"], "stain": row["stain"],
            "status": (summary or {}).get("status", "no result"), "slide": info, "problem": problem,
            "overlays": overlays(summary, cohort.geojson(slide_id)),
            "registration": registration(cohort, slide_id) if row["stain"] != "HE" else None}
