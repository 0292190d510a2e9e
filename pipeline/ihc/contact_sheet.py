"""Contact sheets of IHC tiles, for a reader to check the quantification by eye: :func:`contact_sheet`
(RGB | haematoxylin | DAB | intensity classes | nuclei, one row) and :func:`slide_contact_sheet` (a slide's
most and median positive tiles)."""

from __future__ import annotations

import numpy as np

from pipeline import atomic
from pipeline.ihc import stain
from pipeline.ihc.measure import derived_metrics, quantify_tile
from pipeline.ihc.nuclei import nucleus_classes, nucleus_means
from pipeline.ihc.params import IhcParams
from pipeline.ihc.stain import Deconvolver, intensity_classes

CLASS_COLOURS = np.array([[235, 235, 235], [255, 220, 60], [255, 140, 0], [200, 0, 0]], np.uint8)


def contact_sheet(rgb: np.ndarray, mpp: float, params: IhcParams, nuclear: bool = True,
                  deconvolver: Deconvolver | None = None, title: str = "",
                  nucleus_od_min: float | None = None, nuclear_marker: bool = True) -> tuple[np.ndarray, dict]:
    """RGB | haematoxylin | DAB | intensity classes | nuclei (blue negative, red positive), one row.

    Nuclei are always drawn; for a cytoplasmic/membranous marker (``nuclear_marker=False``) they are found on
    haematoxylin alone, and their counts are for the picture only (such markers are read by area).
    """
    from PIL import Image, ImageDraw
    from skimage.segmentation import find_boundaries

    deconvolver = deconvolver or Deconvolver()
    counts, maps = quantify_tile(rgb, mpp, params, nuclear, deconvolver, nucleus_od_min, return_images=True,
                                 nuclei_include_dab=nuclear_marker)
    h, dab, tissue = maps["h"], maps["dab"], maps["tissue"]
    zero = np.zeros_like(h)
    h_img = stain.compose(h, zero, deconvolver.matrix)
    dab_img = stain.compose(zero, dab, deconvolver.matrix)
    cls = intensity_classes(dab, params.dab_od_thresholds)
    cls_img = CLASS_COLOURS[cls]
    cls_img[~tissue] = 255
    nuc_img = rgb.copy()
    if maps["labels"] is not None and maps["labels"].max() > 0:
        labels = maps["labels"]
        positive = np.zeros(labels.max() + 1, bool)
        ids = np.unique(labels[labels > 0])
        positive[ids] = nucleus_classes(*nucleus_means(labels, h, dab), params.dab_od_thresholds,
                                        params.nucleus_dab_fraction_min, params.nucleus_dab_od_min) > 0
        edge = find_boundaries(labels, mode="inner")
        nuc_img[edge & positive[labels]] = (230, 0, 0)
        nuc_img[edge & ~positive[labels]] = (0, 90, 255)
    panels = [rgb, h_img, dab_img, cls_img, nuc_img]
    names = ["RGB", "haematoxylin", "DAB", "classes 0/1+/2+/3+", "nuclei (red = positive)"]
    m = derived_metrics(counts)
    hgt, wid = rgb.shape[:2]
    band = 34
    sheet = Image.new("RGB", (wid * len(panels) + 4 * (len(panels) - 1), hgt + band), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (panel, name) in enumerate(zip(panels, names, strict=True)):
        sheet.paste(Image.fromarray(np.ascontiguousarray(panel)), (i * (wid + 4), band))
        draw.text((i * (wid + 4) + 4, 18), name, fill="black")
    summary = (f"{title} {mpp:g} um/px | DAB+ area {m['area_positive_pct']}% | H-score {m['h_score']} | "
               f"nuclei {counts['nuclei']}, positive {m['nuclei_positive_pct']}%")
    draw.text((4, 3), summary.strip(), fill="black")
    return np.asarray(sheet), {**counts, **m}


def png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def slide_contact_sheet(slide, rows, grid_size_um, params, entry, summary, path) -> None:
    """Contact sheet of the slide's most and median positive tiles (by the marker's metric)."""
    from pipeline.ihc.markers import is_nuclear

    metric = entry["reading"]["metric"]
    vals = np.array([-1.0 if r[metric] is None else r[metric] for r in rows])
    order = np.argsort(vals)
    picks = [int(order[-1]), int(order[len(order) // 2])]
    tile_px = int(round(grid_size_um / params.quantify_mpp))
    deconvolver = Deconvolver(_matrix_from(summary["method"]), tuple(summary["method"]["background_rgb"]))
    sheets = []
    for i in picks:
        rgb = slide.read_tile(rows[i]["x"], rows[i]["y"], tile_px, params.quantify_mpp)
        sheet, _ = contact_sheet(rgb, params.quantify_mpp, params, True, deconvolver,
                                 title=f"tile x={rows[i]['x']} y={rows[i]['y']}",
                                 nucleus_od_min=summary["method"]["nucleus_od_min"], nuclear_marker=is_nuclear(entry))
        sheets.append(sheet)
    atomic.write_bytes(path, png_bytes(np.concatenate(sheets, axis=0)))


def _matrix_from(method: dict) -> np.ndarray:
    return stain.stain_matrix(method["h_vector"], method["dab_vector"])
