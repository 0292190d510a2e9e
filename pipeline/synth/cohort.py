"""The sample cohort: four cases of synthetic H&E and IHC slides with their expected calls (``slides_sample``).

* :data:`SAMPLE_COHORT`: (case, slide, layout, stain, format) rows, one layout seed per case, so a case's IHC
  slides show exactly the cells of its H&E slide, each IHC slide placed on its glass under its own seeded rigid
  transform (rotation, shift, sometimes a mirror; :func:`pipeline.synth.placement.random_placement`), recorded in
  its truth file; :data:`SAMPLE_SIZE_PX` (H&E), :data:`SAMPLE_IHC_SIZE_PX` (IHC: square, so the tissue fits at
  any angle), :data:`SAMPLE_MPP`;
* :data:`CASE_TRUTH`: the expected case call of each layout; :func:`expected_slide_result`: a slide's expected
  call, % positive tumour cells and intensity;
* :func:`make_cohort`: write the cohort and ``truth.tsv`` (skipped while its ``.stamp`` matches the generator):
  expected calls, and for IHC slides the drawn tumour cells, % positive among them and the placement.
"""

from __future__ import annotations

import csv
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pipeline.atomic import atomic_path
from pipeline.synth.classes import expression
from pipeline.synth.layout import LAYOUTS
from pipeline.synth.slide_writer import write_slide
from pipeline.synth.version import VERSION, sources_hash

# The sample cohort: (case, slide, layout, stain, format). One layout seed per case: its IHC slides show
# exactly the cells of its H&E slide, moved by the IHC slide's placement.
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
# IHC slides: 3.5 x 3.5 mm, wider than the circle around each case's tissue (radius <= 1.6 mm), so a section turned
# by any angle stays on its glass
SAMPLE_IHC_SIZE_PX = (7000, 7000)
SAMPLE_MPP = 0.5
CASE_TRUTH = {"breast_duct_carcinoma": ("carcinoma", "favours metastatic carcinoma"),
              "cervical_squamous_carcinoma": ("carcinoma", "favours metastatic carcinoma"),
              "leiomyosarcoma": ("sarcoma", "favours sarcoma"),
              "pleomorphic_sarcoma": ("sarcoma", "favours sarcoma"),
              "benign_soft_tissue": ("no_tumour", "no tumour")}


def expected_slide_result(layout: str, stain: str) -> tuple[str, float, int]:
    """(expected call, % positive tumour cells, intensity) of a slide of ``layout`` stained with ``stain``."""
    if stain == "HE":
        return CASE_TRUTH[layout][0], 0.0, 0
    tumour = list(LAYOUTS[layout]["tumour"])
    if not tumour:
        return "negative", 0.0, 0
    frac, level = expression(tumour[0], stain)
    return ("positive" if frac >= 0.5 else "negative"), round(100 * frac, 1), level


def _write_job(job: dict) -> dict:
    return write_slide(**job)


def _jobs(out: Path) -> list[dict]:
    """write_slide arguments of each slide of the cohort, in SAMPLE_COHORT order."""
    case_seed = {c: 1000 + i for i, c in enumerate(sorted({row[0] for row in SAMPLE_COHORT}))}
    jobs = []
    for i, (case, slide, layout, stain, fmt) in enumerate(SAMPLE_COHORT):
        seed = case_seed[case] * 100 + i
        size = SAMPLE_SIZE_PX if stain == "HE" else SAMPLE_IHC_SIZE_PX
        ihc = {} if stain == "HE" else {"placement_seed": seed, "he_slide": f"{case}-HE"}
        jobs.append(dict(path=out / f"{slide}.{fmt}", width=size[0], height=size[1], mpp=SAMPLE_MPP,
                         layout_size=SAMPLE_SIZE_PX, seed=seed, layout_seed=case_seed[case], stain=stain,
                         layout=layout, fmt=fmt, tissue_fraction=0.45, identifiers=(fmt == "svs"), **ihc))
    return jobs


def _drawn(rec: dict) -> list:
    """truth.tsv's drawn figures of a slide: tumour cells, % positive, placement (empty where they do not apply)."""
    tumour = rec.get("cells", {}).get("tumour", {})
    reg = rec.get("registration") or {}
    return [tumour.get("n", ""), "" if tumour.get("positive_pct") is None else tumour["positive_pct"],
            reg.get("rotation_deg", ""), "" if not reg else int(reg["flip"]),
            *(reg.get("shift_um") or ("", ""))]


def _write_truth_table(out: Path, records: list[dict]) -> None:
    with atomic_path(out / "truth.tsv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["case_id", "slide_id", "stain", "layout", "expected_slide_call", "tumour_positive_pct",
                    "tumour_intensity", "expected_case_call", "drawn_tumour_cells", "drawn_tumour_positive_pct",
                    "rotation_deg", "flip", "shift_x_um", "shift_y_um"])
        for (case, slide, layout, stain, _), rec in zip(SAMPLE_COHORT, records, strict=True):
            call, pct, level = expected_slide_result(layout, stain)
            w.writerow([case, slide, stain, layout, call, pct, level, CASE_TRUTH[layout][1], *_drawn(rec)])


def make_cohort(out: str | os.PathLike, workers: int = 2, force: bool = False) -> list[dict]:
    """Write the sample cohort to ``out`` (skipped when its .stamp matches this generator) and truth.tsv."""
    out = Path(out)
    stamp = out / ".stamp"
    key = f"{VERSION} {sources_hash()} {SAMPLE_SIZE_PX} {SAMPLE_IHC_SIZE_PX} {SAMPLE_MPP}"
    names = [f"{slide}.{fmt}" for _, slide, _, _, fmt in SAMPLE_COHORT]
    if not force and stamp.is_file() and stamp.read_text().strip() == key and all((out / n).is_file() for n in names):
        print(f"sample cohort in {out} is up to date ({len(names)} slides)")
        return []
    out.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    t0 = time.perf_counter()
    records = []
    with ProcessPoolExecutor(max(1, workers)) as pool:  # one slide per process: encoding runs in parallel too
        for (case, slide, *_), rec in zip(SAMPLE_COHORT, pool.map(_write_job, _jobs(out)), strict=True):
            print(f"{rec['slide']}: {rec['width']}x{rec['height']} px, {rec['stain']}, {rec['layout']}, "
                  f"{rec['write_seconds']} s")
            records.append(dict(rec, case_id=case, slide_id=slide))
    _write_truth_table(out, records)
    stamp.write_text(key + "\n")
    print(f"wrote {len(records)} slides to {out} in {time.perf_counter() - t0:.1f} s (synthetic, not patient data)")
    return records
