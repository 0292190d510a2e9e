"""Is this slide what the sample sheet says it is? :func:`stain_check` reads a thumbnail's stain colours
(haematoxylin, eosin, DAB) and flags a probable mislabel (DAB on an "HE" slide, no DAB on an IHC slide)."""

from __future__ import annotations

import numpy as np

from pipeline.ihc.stain import _DAB, _H, _check_rgb, _unit, estimate_background, rgb_to_od

STAIN_CHECK_REFERENCES = {
    "haematoxylin": _unit(_H),
    "eosin": _unit((0.2159, 0.8012, 0.5581)),
    "dab": _unit(_DAB),
}


def stain_check(rgb_thumbnail: np.ndarray, stain: str, *, stained_od_min: float = 0.15,
                he_dab_max: float = 0.05, he_eosin_min: float = 0.3, ihc_dab_min: float = 0.01,
                ihc_eosin_min: float = 0.3, min_stained_pixels: int = 200) -> dict:
    """Does a thumbnail look like its labelled stain? A probable mislabel is flagged, never silently scored.

    Each pixel whose OD vector is at least ``stained_od_min`` long (glass divided out, see
    :func:`estimate_background`) is assigned to the nearest reference stain colour (haematoxylin, eosin, DAB)
    by angle; the fractions of stained pixels per stain decide:

    * an ``HE``-labelled slide with DAB as at least ``he_dab_max`` of stained pixels and more DAB than eosin
      looks like an IHC slide (brown pigment in a real H&E stays below its eosin);
    * an ``HE``-labelled slide with eosin below ``he_eosin_min`` of stained pixels does not look like H&E:
      haematoxylin without eosin is an IHC slide's counterstain, and a negative IHC (no DAB) shows nothing
      else. A real H&E whose violet eosin reads as haematoxylin (OS-1) is flagged too: the safe side, since a
      negative keratin slide scored as H&E would read "no tumour";
    * an IHC-labelled slide with DAB below ``ihc_dab_min`` and eosin at least ``ihc_eosin_min`` looks like
      an H&E slide (an IHC with no DAB and no eosin is simply negative, and is not flagged).

    Defaults were set on the real reference images (4 um/px thumbnails): H&E images (histo.jpg, TCGA crops,
    cmu_small_region, OS-1, the TCGA frozen section) have DAB <= 0.0001 and eosin 0.6-1.0, except OS-1 whose
    violet eosin reads as haematoxylin (so absence of eosin alone does not make an IHC-labelled slide H&E);
    IHC images (ihc.png, the OS-2 Ki-67 pair) have DAB 0.23-0.89 and eosin <= 0.02. On the generated sample
    cohort (2 um/px QC thumbnails) the H&E slides have eosin 0.57-0.88 and DAB <= 0.0005; its IHC slides have
    eosin <= 0.21, and DAB 0.36-0.65 when positive, 0-0.08 when negative.
    Returns a JSON-ready dict: ``status`` (ok | warn | not_evaluable), ``probable_mislabel``, ``looks_like``
    (HE | IHC | unclear), ``fractions``, ``stained_pixels`` and a one-line ``reason``.
    """
    _check_rgb(rgb_thumbnail)
    background = estimate_background(rgb_thumbnail)
    od = rgb_to_od(rgb_thumbnail, background).reshape(-1, 3)
    norm = np.linalg.norm(od, axis=1)
    stained = od[norm >= stained_od_min] / norm[norm >= stained_od_min, None]
    names = list(STAIN_CHECK_REFERENCES)
    result = {"stain": stain, "stained_pixels": int(len(stained)), "probable_mislabel": False,
              "background_rgb": [round(float(v), 1) for v in background]}
    if len(stained) < min_stained_pixels:
        result.update(status="not_evaluable", looks_like="unclear", fractions=None,
                      reason=f"only {len(stained)} stained pixels (< {min_stained_pixels}): too little tissue to check")
        return result
    nearest = (stained @ np.vstack([STAIN_CHECK_REFERENCES[n] for n in names]).T).argmax(axis=1)
    fractions = {n: round(float(f), 4) for n, f in zip(names, np.bincount(nearest, minlength=3) / len(stained),
                                                       strict=True)}
    dab, eosin = fractions["dab"], fractions["eosin"]
    looks_ihc = dab >= he_dab_max and dab > eosin
    lacks_eosin = eosin < he_eosin_min
    looks_he = dab < ihc_dab_min and eosin >= ihc_eosin_min
    result["looks_like"] = "IHC" if looks_ihc else "HE" if looks_he else "unclear"
    result["fractions"] = fractions
    is_he = stain == "HE"
    if is_he and looks_ihc:
        result.update(status="warn", probable_mislabel=True,
                      reason=f"colour looks like DAB immunohistochemistry, not H&E: {dab:.0%} of stained pixels "
                             f"are DAB brown (>= {he_dab_max:.0%}, more than eosin {eosin:.0%}); check the sample "
                             "sheet's stain column")
    elif is_he and lacks_eosin:
        result.update(status="warn", probable_mislabel=True,
                      reason=f"colour does not look like H&E: only {eosin:.1%} of stained pixels are eosin pink "
                             f"(< {he_eosin_min:.0%}; DAB {dab:.1%}), the haematoxylin-only look of an "
                             "immunohistochemistry slide; check the sample sheet's stain column")
    elif not is_he and looks_he:
        result.update(status="warn", probable_mislabel=True,
                      reason=f"labelled {stain} (IHC) but DAB is {dab:.1%} of stained pixels (< {ihc_dab_min:.0%}) "
                             f"and eosin {eosin:.0%} (>= {ihc_eosin_min:.0%}): probable H&E slide; not scored")
    else:
        result.update(status="ok", reason=f"consistent with {stain}: haematoxylin {fractions['haematoxylin']:.0%}, "
                                          f"eosin {eosin:.0%}, DAB {dab:.0%} of stained pixels")
    return result
