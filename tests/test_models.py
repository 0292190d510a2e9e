"""Model registry, TileClassifier preprocessing, model card and the refusal of unsafe or mismatched weights."""

import json
import os
import pickle

import numpy as np
import pytest
import torch

from pipeline.atomic import file_sha256
from pipeline.errors import ModelError
from pipeline.he.models import (
    ARCHITECTURES,
    INTENDED_USE,
    TileClassifier,
    load_model,
    missing_ood_statistics,
    read_card,
    save_weights,
)
from pipeline.he.slide_call import CLASSES


def write_model(directory, architecture="small_cnn", ood_scale=10.0, **card_overrides):
    """A random-weight model directory with a valid card (what training writes, minus the results).

    ``ood_scale=0`` gives weights without OOD statistics (the buffer as built); ``ood=None`` a card without
    its ``ood`` section.
    """
    torch.manual_seed(0)
    model = TileClassifier(architecture, len(CLASSES), mean=(0.8, 0.6, 0.75), std=(0.15, 0.2, 0.15))
    model.ood_scale.fill_(ood_scale)
    sha = save_weights(model, directory / "weights.pt")
    card = {
        "card_version": 1, "model_id": "test-model", "architecture": architecture, "classes": list(CLASSES),
        "tile_px": 224, "mpp": 1.0, "normalisation": {"mean": [0.8, 0.6, 0.75], "std": [0.15, 0.2, 0.15]},
        "calibration": {"method": "none", "temperature": 1.0},
        "precision": {"bf16_allowed": True, "bf16_max_prob_diff": 0.0},
        "weights": {"file": "weights.pt", "sha256": sha}, "intended_use": INTENDED_USE,
        "training_data": {}, "test_data": {}, "metrics": {}, "performance": {"tiles_per_s": 0.0},
        "ood": {"method": "Mahalanobis distance to the nearest class mean", "quantile": 0.99},
    }
    card.update(card_overrides)
    card = {k: v for k, v in card.items() if v is not None}
    (directory / "card.json").write_text(json.dumps(card))
    return directory


@pytest.fixture
def model_dir(tmp_path):
    return write_model(tmp_path)


def test_class_order():
    assert CLASSES == ("carcinoma", "sarcoma", "non_tumour")


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_registry_builds_every_architecture(architecture):
    model = TileClassifier(architecture, len(CLASSES)).eval()
    x = torch.randint(0, 256, (2, 96, 96, 3), dtype=torch.uint8)
    with torch.inference_mode():
        logits = model(x)
        probs, ood = model.score(x)
        feats = model.features(x)
    assert logits.shape == probs.shape == (2, len(CLASSES))
    assert torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)
    assert ood.shape == (2,) and feats.shape == (2, model.ood_means.shape[1])
    names = {n for n, _ in model.named_buffers()}
    assert {"mean", "std", "temperature", "ood_means", "ood_precision", "ood_scale"} <= names


def test_input_layouts_and_dtypes_agree():
    model = TileClassifier("small_cnn", 3).eval()
    nhwc = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    nchw = nhwc.permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        a, b, c = model(nhwc), model(nchw), model(nchw.float())
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)
    assert nchw.float().max() > 1  # the caller's float input is not normalised in place
    f = nchw.float()
    before = f.clone()
    with torch.inference_mode():
        model(f)
    assert torch.equal(f, before)


def test_normalisation_and_temperature_travel_with_the_weights(model_dir):
    model, card = load_model(model_dir)
    assert torch.allclose(model.mean.flatten() / 255, torch.tensor(card["normalisation"]["mean"]))
    x = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8)
    with torch.inference_mode():
        cold = model(x)
        model.temperature.fill_(2.0)
        assert torch.allclose(model(x), cold / 2.0, atol=1e-5)


def test_round_trip(model_dir):
    model, card = load_model(model_dir)
    assert card["model_id"] == "test-model" and not model.training
    assert float(model.ood_scale) == 10.0


@pytest.mark.parametrize("ood_scale,card_ood,expected", [
    (10.0, True, None),
    (0.0, True, "the weights' ood_scale is 0"),
    (float("nan"), True, "the weights' ood_scale is nan"),
    (10.0, False, "the card has no ood section"),
    (0.0, False, "the weights' ood_scale is 0 and the card has no ood section"),
])
def test_missing_ood_statistics_names_what_is_missing(tmp_path, ood_scale, card_ood, expected):
    overrides = {} if card_ood else {"ood": None}
    model, card = load_model(write_model(tmp_path, ood_scale=ood_scale, **overrides))
    assert missing_ood_statistics(model, card) == expected


def test_checksum_mismatch_is_refused(model_dir):
    data = bytearray((model_dir / "weights.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (model_dir / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"weights\.pt: SHA-256 .* does not match"):
        load_model(model_dir)


class _RunsCode:
    """Unpickling this calls os.system: a weights file must never be able to do that."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_pickled_code_is_refused_before_it_runs(tmp_path, how):
    model_dir = write_model(tmp_path)
    marker = tmp_path / "code-ran"
    path = model_dir / "weights.pt"
    payload = {"backbone.features.0.weight": _RunsCode(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    card = json.loads((model_dir / "card.json").read_text())
    card["weights"]["sha256"] = file_sha256(path)  # even a matching checksum does not make it safe
    (model_dir / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="weights.pt: (refused|not a torch.save)"):
        load_model(model_dir)
    assert not marker.exists()


def test_non_state_dict_payload_is_refused(tmp_path):
    model_dir = write_model(tmp_path)
    torch.save([torch.zeros(3)], model_dir / "weights.pt")
    card = json.loads((model_dir / "card.json").read_text())
    card["weights"]["sha256"] = file_sha256(model_dir / "weights.pt")
    (model_dir / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="not a state_dict"):
        load_model(model_dir)


def test_unknown_architecture_is_refused(tmp_path):
    write_model(tmp_path, architecture="small_cnn")
    card = json.loads((tmp_path / "card.json").read_text())
    card["architecture"] = "vit_giant"
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="unknown architecture 'vit_giant'.*known: small_cnn"):
        load_model(tmp_path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    write_model(tmp_path, architecture="small_cnn")
    card = json.loads((tmp_path / "card.json").read_text())
    card["architecture"] = "resnet18"
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="do not fit architecture 'resnet18'"):
        load_model(tmp_path)


def test_card_schema_and_missing_card(tmp_path):
    with pytest.raises(ModelError, match="cannot read the model card"):
        read_card(tmp_path)
    write_model(tmp_path, intended_use="clinical diagnosis")
    with pytest.raises(ModelError, match="intended_use"):
        read_card(tmp_path)


def test_shipped_model_card():
    """The default model (config schema's `model`) loads, and its card records what the issue asks for."""
    from pipeline.config import load_schema

    model_dir = os.path.join(os.path.dirname(__file__), "..", load_schema("config")["properties"]["model"]["default"])
    assert os.path.isfile(os.path.join(model_dir, "card.json")), f"no shipped model at {model_dir}"
    model, card = load_model(model_dir)
    assert tuple(card["classes"]) == CLASSES and card["intended_use"] == INTENDED_USE
    assert card["performance"]["tiles_per_s"] > 0 and card["calibration"]["temperature"] > 0
    assert 0 <= card["precision"]["bf16_max_prob_diff"] < 0.1
    assert card["metrics"]["per_source"] and float(model.ood_scale) > 0
    assert os.path.getsize(os.path.join(model_dir, card["weights"]["file"])) < 20e6
    assert np.isfinite(model.ood_precision.numpy()).all()
