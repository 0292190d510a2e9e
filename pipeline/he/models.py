"""Tile classifiers: a registry of builders, the model card, and safe loading of weights.

* :data:`ARCHITECTURES` maps an architecture name to a builder ``num_classes -> nn.Module`` (torchvision
  backbones with ``weights=None`` -- nothing is ever downloaded -- and a small custom CNN).
* :class:`TileClassifier` wraps a backbone with its preprocessing: the normalisation mean/std, the
  calibration temperature and the out-of-distribution (OOD) statistics are buffers in the state_dict, so
  they travel with the weights and cannot drift from them. Input is RGB in 0-255 (uint8 or float), NHWC
  or NCHW; output is temperature-scaled logits.
* :func:`load_model` reads ``models/<model_id>/card.json`` (schema: pipeline/schemas/model_card.schema.yaml),
  checks the weights' SHA-256 against the card and only then loads them with ``torch.load(weights_only=True)``,
  so no code from the file ever runs. Every refusal is a one-line :class:`ModelError`.

OOD score: Mahalanobis distance of a tile's pooled features to the nearest class mean under the shared
within-class covariance of the training features (Lee et al., NeurIPS 2018), divided by the distance that
99 % of the validation tiles stay below. A score above 1 reads "unlike the training data".
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pipeline.atomic import file_sha256
from pipeline.errors import ModelError

CARD_FILE = "card.json"
CARD_VERSION = 1
INTENDED_USE = "research / decision support, not for clinical use"
# ImageNet statistics: a neutral default; training records the statistics it used in the card and the buffers.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---- builders -------------------------------------------------------------------------------------------
def small_cnn(num_classes: int, stem: int = 16, widths: tuple[int, ...] = (32, 64, 128, 192)) -> nn.Module:
    """A plain CNN for 224 px tiles: a stride-2 stem, four stages of two 3x3 conv + BN + ReLU (the first with
    stride 2), global average pooling and a linear head.

    The last stage sees 7 x 7 px with a receptive field of ~200 px, which covers glands, nests and fascicles
    at 1 um/px. Dense 3x3 convolutions run well on oneDNN's bf16 (AMX) paths, unlike depthwise ones:
    measured ~900 tiles/s at 224 px on 2 cores, 2x mobilenet_v3_small.
    """

    def conv(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

    layers, c_in = conv(3, stem, 2), stem
    for c_out in widths:
        layers += conv(c_in, c_out, 2) + conv(c_out, c_out, 1)
        c_in = c_out
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(*layers))
    net.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    net.add_module("classifier", nn.Sequential(nn.Dropout(0.2), nn.Linear(c_in, num_classes)))
    return net


def _torchvision(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)

    build.__name__ = name
    return build


def _efficientnet_lite0(last_block: int | None = None, grey: bool = False) -> Callable[[int], nn.Module]:
    """EfficientNet-Lite0 (pipeline/he/efficientnet_lite.py), pooled after ``last_block`` (None: the full network
    and its 1280-d head convolution), grey input or colour, and a linear head. The weights -- ImageNet backbone
    and the fitted head -- come from the model's weights file, never from a download."""

    def build(num_classes: int) -> nn.Module:
        from pipeline.he.efficientnet_lite import efficientnet_lite0

        return efficientnet_lite0(num_classes, last_block=last_block, grey_input=grey)

    return build


def lite0_name(tap: str, grey: bool) -> str:
    """Architecture name of an EfficientNet-Lite0 variant: tap ``head`` / ``b14`` / ``b10``, grey or colour."""
    return "efficientnet_lite0" + ("_grey" if grey else "") + ("" if tap == "head" else f"_{tap}")


# name -> (builder, attribute of the built module holding the classification head). The head is split off
# so the wrapper sees the pooled features (for the OOD score); its input size is the feature size.
ARCHITECTURES: dict[str, tuple[Callable[[int], nn.Module], str]] = {
    "small_cnn": (small_cnn, "classifier"),
    "mobilenet_v3_small": (_torchvision("mobilenet_v3_small"), "classifier"),
    "mobilenet_v3_large": (_torchvision("mobilenet_v3_large"), "classifier"),
    "efficientnet_b0": (_torchvision("efficientnet_b0"), "classifier"),
    "resnet18": (_torchvision("resnet18"), "fc"),
}
ARCHITECTURES.update({lite0_name(tap, grey): (_efficientnet_lite0(None if tap == "head" else int(tap[1:]), grey), "_fc")
                      for tap in ("head", "b14", "b10") for grey in (False, True)})


def _feature_dim(head: nn.Module) -> int:
    first = next(m for m in head.modules() if isinstance(m, nn.Linear))
    return first.in_features


class TileClassifier(nn.Module):
    """Backbone + head with the preprocessing, calibration and OOD statistics as buffers.

    ``forward(x)`` takes RGB tiles in 0-255 -- uint8 or float, NHWC ``(B, H, W, 3)`` or NCHW ``(B, 3, H, W)``
    -- and returns calibrated logits (divided by the temperature). :meth:`score` returns calibrated
    probabilities and the OOD score in one pass.
    """

    def __init__(self, architecture: str, num_classes: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 temperature: float = 1.0):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ModelError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
        builder, head_attr = ARCHITECTURES[architecture]
        net = builder(num_classes)
        self.head = getattr(net, head_attr)
        setattr(net, head_attr, nn.Identity())
        self.backbone = net
        self.architecture = architecture
        dim = _feature_dim(self.head)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        # OOD statistics (set by training): class means, shared precision, distance scale (0 = no OOD score)
        self.register_buffer("ood_means", torch.zeros(num_classes, dim))
        self.register_buffer("ood_precision", torch.eye(dim))
        self.register_buffer("ood_scale", torch.tensor(0.0))

    @property
    def num_classes(self) -> int:
        return self.ood_means.shape[0]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """0-255 RGB (uint8/float, NHWC or NCHW) -> normalised float NCHW (channels_last when given NHWC)."""
        if x.dim() != 4:
            raise ValueError(f"expected a batch of RGB tiles (4-D), got shape {tuple(x.shape)}")
        if x.shape[1] != 3 and x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)  # NHWC memory viewed as NCHW = channels_last, no copy
        if getattr(self.backbone, "grey_input", False):  # stain colour hidden from the model (its card says why)
            x = x.to(torch.float32).mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
        # in place on a private float copy: one pass over memory instead of three (x - mean) / std temporaries
        scale = 1.0 / self.std
        return x.to(torch.float32, copy=True).mul_(scale).sub_(self.mean * scale)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalise(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) / self.temperature

    def ood_score(self, feats: torch.Tensor) -> torch.Tensor:
        """Min over classes of the Mahalanobis distance, in units of the validation 99th percentile."""
        with torch.autocast(feats.device.type, enabled=False):
            diff = feats.float()[:, None, :] - self.ood_means[None, :, :]  # (B, C, D)
            d2 = torch.einsum("bcd,de,bce->bc", diff, self.ood_precision, diff).clamp_min(0)
            dist = d2.min(dim=1).values.sqrt()
        return dist / self.ood_scale if self.ood_scale > 0 else torch.zeros_like(dist)

    def score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(calibrated probabilities (B, C) float32, OOD score (B,) float32) for a batch of tiles.

        The backbone may run under autocast (bf16); the head, softmax and OOD distance run in float32.
        """
        feats = self.features(x)
        with torch.autocast(feats.device.type, enabled=False):
            logits = self.head(feats.float()) / self.temperature
        return logits.softmax(dim=1), self.ood_score(feats)


# ---- model card and weights ------------------------------------------------------------------------------
def read_card(model_dir: str | os.PathLike) -> dict:
    """Read and validate ``<model_dir>/card.json``; the architecture must be registered."""
    import jsonschema

    from pipeline.config import load_schema

    path = Path(model_dir) / CARD_FILE
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model card ({exc.strerror}); pass --model models/<model_id> "
                         "(a directory with card.json and the weights)") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: the model card is not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    errors = sorted(jsonschema.Draft202012Validator(load_schema("model_card")).iter_errors(card),
                    key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        where = ".".join(str(p) for p in errors[0].absolute_path) or "(top level)"
        raise ModelError(f"{path}: {where}: {errors[0].message}; fix the card (schema: model_card.schema.yaml)")
    if card["architecture"] not in ARCHITECTURES:
        raise ModelError(f"{path}: unknown architecture {card['architecture']!r}; known: "
                         f"{', '.join(ARCHITECTURES)} -- use a card written for this version of slide-triage")
    return card


def build_model(card: dict) -> TileClassifier:
    """An untrained classifier of the card's architecture and classes (buffers at their defaults)."""
    norm = card.get("normalisation", {})
    return TileClassifier(card["architecture"], len(card["classes"]), norm.get("mean", IMAGENET_MEAN),
                          norm.get("std", IMAGENET_STD), card.get("calibration", {}).get("temperature", 1.0))


def load_state_dict(path: str | os.PathLike, sha256: str) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, after its SHA-256 matches ``sha256``; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found; copy it next to card.json or re-run training")
    actual = file_sha256(path)
    if actual != sha256:
        raise ModelError(f"{path}: SHA-256 {actual[:16]}... does not match the card's {sha256[:16]}...; the file "
                         "is corrupt or not this card's weights -- restore it (git checkout / re-train)")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path}: not a torch.save zip archive (legacy or foreign pickle); refusing to load it -- "
                         "re-save the weights as a state_dict with torch.save")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for disallowed globals, RuntimeError for damaged archives
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: refused: not a plain tensor state_dict ({first[:160]}); "
                         "save weights with torch.save(model.state_dict(), ...)") from None
    if not (isinstance(state, dict) and state and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in state.items())):
        raise ModelError(f"{path}: payload is a {type(state).__name__}, not a state_dict of tensors; "
                         "save weights with torch.save(model.state_dict(), ...)")
    return state


def load_model(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[TileClassifier, dict]:
    """Card + verified weights -> (classifier in eval mode on ``device``, card)."""
    card = read_card(model_dir)
    path = Path(model_dir) / card["weights"]["file"]
    state = load_state_dict(path, card["weights"]["sha256"])
    model = build_model(card)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit architecture {card['architecture']!r} with "
                         f"{len(card['classes'])} classes ({str(exc).splitlines()[0][:160]}); "
                         "the card and the weights belong to different models") from None
    return model.eval().to(device), card


def missing_ood_statistics(model: TileClassifier, card: dict) -> str | None:
    """What the model lacks for an OOD score, or None when it has one.

    The weights' ``ood_scale`` buffer must be a positive finite number (training sets it; 0 means "never set",
    and every tile would read as in distribution) and the card must describe the score in its ``ood`` section.
    """
    scale = float(model.ood_scale)
    problems = []
    if not (scale > 0 and scale < float("inf")):
        problems.append(f"the weights' ood_scale is {scale:g}")
    if not card.get("ood"):
        problems.append("the card has no ood section")
    return " and ".join(problems) or None


def save_weights(model: nn.Module, path: str | os.PathLike) -> str:
    """Write ``model``'s state_dict atomically; return its SHA-256.

    Saved through memory so the archive's inner folder name does not depend on the temporary file name:
    the same weights always give the same bytes (and checksum).
    """
    import io

    from pipeline.atomic import write_bytes

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, buf)
    write_bytes(path, buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()
