"""Share of tiles over the OOD threshold per category, for the model's feature distance, the H&E tile check and
their maximum (the workflow's OOD score): the figures of docs/model_selection.md and tests/test_ood_guard.py.
With ``--real``, also per source of the real H&E the check was calibrated on (train/ and patches/, blank crops
left out as the calibration does).

    PYTHONPATH=. python tests/measure_ood.py [--real]   (needs ../shared/data and slides_sample/; 1-2 min)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import ood_tiles as tiles  # noqa: E402

from conftest import MODEL_DIR_NAME, ROOT, SHARED_DATA  # noqa: E402
from pipeline.he.models import load_model  # noqa: E402
from pipeline.he.tile_check import tile_check_reasons, tile_check_scores  # noqa: E402
from pipeline.training.labelled_images import image_tiles, load_rgb  # noqa: E402


def categories(data: Path, px: int, mpp: float) -> dict[str, np.ndarray]:
    s = data / "slides"
    cmu = tiles.slide_tiles(s / "cmu_small_region.svs", px, mpp)
    sample_he = [p for p in sorted((ROOT / "slides_sample").glob("*-HE.*")) if p.suffix in {".svs", ".tif"}]
    return {
        "H&E unseen: CMU skin": cmu,
        "H&E unseen: TCGA HNSC frozen": tiles.slide_tiles(s / "tcga-cr-7395-01a-01-ts1.svs", px, mpp, slide_mpp=1.0),
        "H&E unseen: OS-1 + histo.jpg": np.concatenate([tiles.slide_tiles(s / "OS-1-detail.ome.tif", px, mpp),
                                                        image_tiles(load_rgb(data / "images" / "histo.jpg"), 0.5,
                                                                    mpp, px, 4)]),
        "H&E sample cohort (synthetic)": np.concatenate([tiles.slide_tiles(p, px, mpp, 16) for p in sample_he]),
        "IHC (sample cohort)": tiles.ihc_tiles(px, mpp),
        **{f"IHC real: Ki-67 OS-2 {k}": v for k, v in tiles.real_ihc_tiles(data, px, mpp).items()},
        "photographs (skimage)": tiles.natural_images(px),
        "pen ink": tiles.pen_ink(px),
        "glass": tiles.glass(px),
        "blurred H&E (CMU, 8 px)": tiles.blurred(cmu),
        "fluorescence": tiles.fluorescence(px),
    }


HEADER = "| tiles | n | model > 1 | tile check > 1 | max > 1 | checks that fired |\n|---|---|---|---|---|---|"


def _row(name: str, model, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        m = np.concatenate([model.score(torch.from_numpy(np.ascontiguousarray(batch[i:i + 64])))[1].numpy()
                            for i in range(0, len(batch), 64)])
    c = tile_check_scores(batch)
    reasons = [r for r in tile_check_reasons(batch) if r != "ok"]
    fired = ", ".join(f"{r} {reasons.count(r)}" for r in sorted(set(reasons)))
    print(f"| {name} | {len(batch)} | {100 * (m > 1).mean():.1f} % | {100 * (c > 1).mean():.1f} % | "
          f"{100 * (np.maximum(m, c) > 1).mean():.1f} % | {fired} |")
    return np.maximum(m, c)


def main() -> None:
    model, card = load_model(ROOT / "models" / MODEL_DIR_NAME)
    px, mpp = card["tile_px"], card["mpp"]
    if "--real" in sys.argv[1:]:
        from pipeline.training.tile_check_calibration import real_tiles

        print(HEADER.replace("| tiles |", "| real H&E source |"))
        real = real_tiles([SHARED_DATA / "train" / "labels.csv", SHARED_DATA / "patches" / "labels.csv"], mpp, px, 4)
        pooled = np.concatenate([_row(name, model, batch) for name, batch in real.items()])
        print(f"| all real H&E | {len(pooled)} | | | {100 * (pooled > 1).mean():.1f} % | |\n")
    print(HEADER)
    non_he = []
    for name, batch in categories(SHARED_DATA, px, mpp).items():
        score = _row(name, model, batch)
        if not name.startswith("H&E"):
            non_he.append(score)
    pooled = np.concatenate(non_he)
    print(f"| all non-H&E (test b) | {len(pooled)} | | | {100 * (pooled > 1).mean():.1f} % | |")


if __name__ == "__main__":
    main()
