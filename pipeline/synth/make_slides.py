"""The ``make-slides`` CLI verb: synthetic H&E/IHC whole-slide images with ground truth.

``--cohort sample --out DIR`` writes the sample cohort (:func:`pipeline.synth.cohort.make_cohort`, optionally
with a :func:`~pipeline.synth.contact_sheet.contact_sheet`); ``--out SLIDE.svs|.tif`` writes one slide
(:func:`pipeline.synth.slide_writer.write_slide`). Public: :func:`configure_parser`, :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pipeline.synth.cohort import make_cohort
from pipeline.synth.contact_sheet import contact_sheet
from pipeline.synth.layout import LAYOUTS
from pipeline.synth.slide_writer import write_slide


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
