"""Ground truth beside each synthetic slide: what was drawn, as ``<slide>.truth.json`` and ``<slide>.truth.png``.

The JSON record names the generator, the slide's geometry, classes and their shares, stain and expected
expression; the PNG is the class map (one grey level per class id of :data:`pipeline.synth.classes.CLASSES`) at
``labels_um_per_px``, in the slide's own frame: level-0 pixel (x, y) is label pixel (x * mpp / labels_um_per_px,
y * mpp / labels_um_per_px). :func:`~pipeline.synth.slide_writer.write_slide` adds ``registration`` (None, or
for a section placed on its glass under a rigid transform: ``to_he_level0_px``, the 3x3 matrix from its level-0
px to the H&E slide's, with ``rotation_deg``, ``flip``, ``shift_um``, ``centre_um``, ``he_slide``:
:meth:`pipeline.synth.placement.Placement.record`) and, on IHC slides, ``cells``: the drawn cells per tissue
class and over all tumour cells, positive per intensity (:func:`pipeline.synth.cell_truth.cell_truth`).

Public: :func:`expression_truth`, :func:`truth_record`, :func:`write_truth`.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.atomic import atomic_path, write_json
from pipeline.synth.classes import CLASSES, expression
from pipeline.synth.layout import Layout
from pipeline.synth.version import VERSION


def expression_truth(marker: str, lay: Layout) -> dict:
    """What an IHC slide shows: per tissue class present, the fraction of positive cells and the intensity."""
    out = {}
    for name, share in lay.class_fractions().items():
        frac, level = expression(name, marker)
        out[name] = {"positive_fraction": frac, "intensity": level, "tissue_share": share}
    return out


def truth_record(path: Path, lay: Layout, *, fmt: str, stain: str, layout: str, seed: int, layout_seed: int,
                 mpp: float, objective_power: int, sizes: list[tuple[int, int]], artefacts: tuple[str, ...],
                 truth: bool) -> dict:
    """The truth record of a written slide (``labels_png`` None when no truth files are written)."""
    width, height = sizes[0]
    return {
        "generator": "pipeline.synth", "version": VERSION, "slide": path.name, "format": fmt,
        "stain": stain, "layout": layout, "seed": seed, "layout_seed": layout_seed, "mpp": mpp,
        "objective_power": objective_power,
        "width": width, "height": height, "levels": [list(s) for s in sizes], "artefacts": list(artefacts),
        "labels_png": f"{path.name}.truth.png" if truth else None, "labels_um_per_px": lay.layout_um,
        "classes": list(CLASSES), "class_fractions": lay.class_fractions(),
        "expression": expression_truth(stain, lay) if stain != "HE" else {},
        "decision_support": "synthetic test data, not a patient's slide",
    }


def write_truth(path: Path, record: dict, lay: Layout) -> None:
    """``<path>.truth.json`` (the record) and ``<path>.truth.png`` (the class map), each written atomically."""
    from PIL import Image

    write_json(Path(f"{path}.truth.json"), record)
    with atomic_path(Path(f"{path}.truth.png")) as tmp:
        Image.fromarray(lay.labels).save(tmp, format="PNG")
