"""The shipped model's out-of-distribution guard (issue 12): tiles that are not H&E tissue must score above its
threshold (OOD > 1) on >= 95 % of tiles, real H&E from slides no model was trained on below it on >= 90 %.

The second holds for triage-smallcnn-v1; the first does not yet (measured: IHC 13 %, photographs 30 %, pen 75 %,
blur 60 %, fluorescence 75 %, glass 0 %; docs/model_selection.md), so it is an expected failure, strict: the day a
model passes it, the marker must go."""

import numpy as np
import ood_tiles as tiles
import pytest
import torch

from conftest import MODEL_DIR_NAME, ROOT, require_sample_cohort
from pipeline.training.labelled_images import image_tiles, load_rgb


@pytest.fixture(scope="module")
def shipped():
    from pipeline.he.models import load_model

    return load_model(ROOT / "models" / MODEL_DIR_NAME)


def _over(model, batch: np.ndarray) -> float:
    with torch.no_grad():
        _, ood = model.score(torch.from_numpy(np.ascontiguousarray(batch)))
    return float((ood > 1.0).float().mean())


def test_real_he_from_unseen_slides_stays_in_distribution(shipped, shared_data):
    model, card = shipped
    px, mpp = card["tile_px"], card["mpp"]
    s = shared_data / "slides"
    real = [tiles.slide_tiles(s / "cmu_small_region.svs", px, mpp),
            tiles.slide_tiles(s / "tcga-cr-7395-01a-01-ts1.svs", px, mpp, slide_mpp=1.0),
            tiles.slide_tiles(s / "OS-1-detail.ome.tif", px, mpp),
            image_tiles(load_rgb(shared_data / "images" / "histo.jpg"), 0.5, mpp, px, 4)]
    batch = np.concatenate(real)
    assert len(batch) >= 30
    assert _over(model, batch) <= 0.10


@pytest.mark.xfail(strict=True, reason="issue 12 open: no model's OOD guard fires on >= 95 % of non-H&E tiles")
def test_non_he_tiles_are_out_of_distribution(shipped, shared_data):
    require_sample_cohort()
    model, card = shipped
    px, mpp = card["tile_px"], card["mpp"]
    cmu = tiles.slide_tiles(shared_data / "slides" / "cmu_small_region.svs", px, mpp)
    batch = np.concatenate([tiles.ihc_tiles(px, mpp), tiles.natural_images(px), tiles.pen_ink(px), tiles.glass(px),
                            tiles.blurred(cmu), tiles.fluorescence(px)])
    assert _over(model, batch) >= 0.95
