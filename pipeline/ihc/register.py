"""Register an IHC slide onto its H&E slide (serial sections) and the verb ``python -m pipeline register-ihc``.

* :func:`registration_levels` - the two resolutions (um/px) the registration reads, from the slides' sizes;
* :func:`register_slides` - read both slides' pictures through :func:`pipeline.slides.reader.open_slide`, run
  :func:`pipeline.ihc.registration.register_images`, and return the record: the transform as a 3x3 matrix from
  IHC level-0 px to H&E level-0 px (and back), its rotation / flip / scale / shift in um, the quality score, the
  residual error in um, status ``ok`` or ``failed`` with a reason (and, returned but not written by the verb,
  timings and the machine: the file is byte-identical on a rerun);
* :func:`run` - the verb: that record as JSON (atomic write). A failed registration is a record with
  ``"status": "failed"``, its reason and no transform to use (the rejected one is kept for inspection).

No slide path or file name goes into the record: only the slide ids given on the command line.
"""

from __future__ import annotations

import logging
import os
import platform
import time

import numpy as np

from pipeline import atomic
from pipeline.ihc.registration import Level, RegistrationParams, Rigid, level0_matrix, register_images

log = logging.getLogger(__name__)

REGISTRATION_VERSION = 1
# The coarse picture is about this many pixels across the larger slide (8-16 um/px on usual slides), never
# coarser than 16 um/px; the fine one about 1500 px across, between 1 and 4 um/px (2 um/px on the sample slides).
COARSE_PX, COARSE_MPP_MAX = 400, 16.0
FINE_PX, FINE_MPP_MIN, FINE_MPP_MAX = 1500, 1.0, 4.0


def registration_levels(extent_um: float, slide_mpps: tuple[float, ...]) -> tuple[float, float]:
    """(coarse, fine) um/px for slides whose larger side is ``extent_um``; never finer than the slides."""
    finest = max(slide_mpps)
    coarse = max(finest, min(extent_um / COARSE_PX, COARSE_MPP_MAX))
    fine = max(finest, FINE_MPP_MIN, min(extent_um / FINE_PX, FINE_MPP_MAX))
    return coarse, min(fine, coarse)


def _levels(slide, coarse_mpp: float, fine_mpp: float) -> tuple[Level, Level]:
    rgb, mpp = slide.read_downsampled(coarse_mpp)
    coarse = Level.from_rgb(rgb, mpp)
    rgb, mpp = slide.read_downsampled(fine_mpp)
    return coarse, Level.from_rgb(rgb, mpp, coarser=coarse)


def _machine() -> dict:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    import cv2
    import scipy
    import skimage

    return {"cpu": platform.processor() or platform.machine(), "cores": cores,
            "python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "scikit_image": skimage.__version__, "opencv": cv2.__version__}


def _transform_record(rigid: Rigid, he_mpp: float, ihc_mpp: float) -> dict:
    matrix = level0_matrix(rigid, he_mpp, ihc_mpp)
    return {
        "maps": "IHC level-0 px -> H&E level-0 px: [x_he, y_he, 1] = matrix_level0_px @ [x_ihc, y_ihc, 1]",
        "matrix_level0_px": np.round(matrix, 9).tolist(),
        "inverse_matrix_level0_px": np.round(np.linalg.inv(matrix), 9).tolist(),
        "rotation_deg": round(rigid.rotation_deg, 4), "flip": rigid.flip, "scale": round(rigid.scale, 6),
        "shift_um": [round(v, 3) for v in rigid.shift_um],
        "convention": "p_he_um = scale * R(rotation_deg) @ F(flip) @ p_ihc_um + shift_um; F mirrors x; "
                      "R turns clockwise on screen (y down); um = level-0 px x the slide's mpp",
    }


def register_slides(he_path, ihc_path, he_mpp: float | None = None, ihc_mpp: float | None = None,
                    params: RegistrationParams | None = None, he_id: str | None = None,
                    ihc_id: str | None = None) -> dict:
    """Register the IHC slide at ``ihc_path`` onto the H&E slide at ``he_path`` (``*_mpp``: level-0 um/px
    overrides). Returns the JSON-ready record (see the module docstring); raises SlideError for unusable slides."""
    from pipeline.slides.reader import open_slide

    params = params or RegistrationParams()
    started = time.perf_counter()
    with open_slide(he_path, mpp=he_mpp) as he, open_slide(ihc_path, mpp=ihc_mpp) as ihc:
        extent_um = max(max(s.dimensions) * s.mpp for s in (he, ihc))
        coarse_mpp, fine_mpp = registration_levels(extent_um, (he.mpp, ihc.mpp))
        he_levels, ihc_levels = _levels(he, coarse_mpp, fine_mpp), _levels(ihc, coarse_mpp, fine_mpp)
        slide_mpp = {"he": he.mpp, "ihc": ihc.mpp}
    read_s = time.perf_counter() - started
    rigid, quality = register_images(he_levels[0], ihc_levels[0], he_levels[1], ihc_levels[1], params)
    register_s = time.perf_counter() - started - read_s
    status, reason = quality.pop("status"), quality.pop("reason")
    transform = _transform_record(rigid, slide_mpp["he"], slide_mpp["ihc"])
    return {
        "version": REGISTRATION_VERSION, "he_slide_id": he_id, "ihc_slide_id": ihc_id,
        "status": status, "reason": reason,
        "transform": transform if status == "ok" else None,
        "rejected_transform": None if status == "ok" else transform,
        "quality": quality,
        "thresholds": {"min_score": params.min_score, "max_residual_um": params.max_residual_um,
                       "min_patches": params.min_patches},
        "slides_mpp": {k: round(v, 6) for k, v in slide_mpp.items()},
        "levels_mpp": {"coarse": round(coarse_mpp, 4), "fine": round(fine_mpp, 4)},
        "timings_s": {"read": round(read_s, 3), "register": round(register_s, 3),
                      "total": round(time.perf_counter() - started, 3)},
        "machine": _machine(),
    }


def configure_parser(parser) -> None:
    parser.add_argument("--he", required=True, help="H&E slide file (the reference frame)")
    parser.add_argument("--ihc", required=True, help="IHC slide file (registered onto the H&E slide)")
    parser.add_argument("--he-mpp", type=float, default=None, help="level-0 um/px override for the H&E slide")
    parser.add_argument("--ihc-mpp", type=float, default=None, help="level-0 um/px override for the IHC slide")
    parser.add_argument("--he-id", default=None, help="H&E slide id to record (default: none)")
    parser.add_argument("--ihc-id", default=None, help="IHC slide id to record (default: none)")
    defaults = RegistrationParams()
    parser.add_argument("--min-score", type=float, default=defaults.min_score,
                        help=f"quality score below which the registration fails (default {defaults.min_score})")
    parser.add_argument("--max-residual-um", type=float, default=defaults.max_residual_um,
                        help="95th percentile residual error above which it fails "
                             f"(default {defaults.max_residual_um} um)")
    parser.add_argument("--out", required=True, help="registration.json to write")


def run(args) -> None:
    from pipeline.errors import SlideError
    from pipeline.redact import redact

    params = RegistrationParams(min_score=args.min_score, max_residual_um=args.max_residual_um)
    try:
        record = register_slides(args.he, args.ihc, args.he_mpp, args.ihc_mpp, params, args.he_id, args.ihc_id)
    except SlideError as exc:
        reason = redact(redact(str(exc), args.he), args.ihc)
        record = {"version": REGISTRATION_VERSION, "he_slide_id": args.he_id, "ihc_slide_id": args.ihc_id,
                  "status": "failed", "reason": reason, "transform": None}
    # the file holds only what the slides decide (byte-identical on a rerun); times and machine go to the log
    timings, machine = record.pop("timings_s", None), record.pop("machine", None)
    atomic.write_json(args.out, record)
    log.info("registration took %s s on %s", timings, machine)
    quality = record.get("quality", {})
    log.info("registration %s: score %s, residual %s um (95th percentile)%s", record["status"],
             quality.get("score"), quality.get("residual_p95_um"),
             f"; {record['reason']}" if record["reason"] else "")
