"""The model card of a small CNN trained by ``python -m pipeline train`` (the v1 baseline).

Public: :func:`build_card` (the card's dict: data counts, calibration, OOD statistics, metrics, performance,
training history, architecture selection, limitations), :func:`count_table` (patches per source, split and class),
:data:`OOD_QUANTILE`, :data:`OOD_SHRINKAGE` (the OOD fit's parameters, recorded on the card), :data:`LIMITATIONS`.
"""

from __future__ import annotations

import sys

from pipeline.he.models import CARD_VERSION, INTENDED_USE, TileClassifier
from pipeline.training.train_data import Patch

OOD_QUANTILE = 0.99
OOD_SHRINKAGE = 0.1
LIMITATIONS = (
    "Research / decision support only; not validated for clinical use.",
    "Real carcinoma and sarcoma training patches come from different organs, centres and scales "
    "(colorectal 0.5 um/px vs osteosarcoma ~1 um/px): per-source results, not a clinical accuracy.",
    "All real sarcoma patches come from one osteosarcoma case; its test slides share that patient.",
    "Trained mostly on synthetic tissue: tissue unlike it raises the OOD score and the slide call refers.",
)


def count_table(data: dict[str, list[Patch]], classes: list[str]) -> dict:
    """Patch counts: source -> split -> class -> n."""
    table: dict = {}
    for split, patches in data.items():
        for p in patches:
            entry = table.setdefault(p.source, {}).setdefault(split, dict.fromkeys(classes, 0))
            entry[classes[p.label]] += 1
    return table


def _training_data_record(args, data: dict[str, list[Patch]], classes: list[str]) -> dict:
    return {"counts": count_table({k: v for k, v in data.items() if k != "test"}, classes),
            "patch_folders": [str(p) for p in args.patches], "assumed_mpp": args.assume_mpp,
            "synthetic_per_class": args.synthetic, "textures_per_class": args.textures,
            "annotated_slides": args.annotated,
            "resampling": f"each patch resampled from its own um/px to {args.mpp} um/px; patches "
                          f"smaller than {args.tile_px} px tiled as same-class same-source mosaics",
            "augmentation": "random crop with +-15% scale jitter, flips, 90-degree rotations, HED "
                            "stain jitter (scale 5%, shift 0.03), brightness 8%, contrast 10%, "
                            "Gaussian blur (20% of tiles, sigma 0.5-1.5 px)",
            "sampling": "class-balanced; within a class sources weighted by sqrt(size)"}


def _selection_record(args, candidates: list[dict], chosen: dict) -> dict:
    return {
        "rule": f"highest validation balanced accuracy among architectures reaching {args.min_tiles_per_s:g} "
                "tiles/s (bare forward, bf16, 2 threads)",
        "candidates": [{"architecture": c["architecture"], "tiles_per_s": round(c["tiles_per_s"], 1),
                        "val_balanced_accuracy": c["val"].get("balanced_accuracy"),
                        "val_accuracy": c["val"].get("accuracy"), "steps": c["info"]["steps_run"],
                        "train_seconds": c["info"]["seconds"]} for c in candidates],
        "chosen": chosen["architecture"]}


def build_card(args, out, model: TileClassifier, *, classes: list[str], data: dict[str, list[Patch]],
               normalisation: dict, calibration: dict, precision: dict, weights: dict, metrics: dict,
               performance: dict, candidates: list[dict], chosen: dict, seconds: float) -> dict:
    """The card.json of a trained model (``weights``: file name and SHA-256 of the saved weights under ``out``)."""
    return {
        "card_version": CARD_VERSION, "model_id": args.model_id or out.name, "architecture": chosen["architecture"],
        "classes": classes, "tile_px": args.tile_px, "mpp": args.mpp,
        "normalisation": normalisation,
        "calibration": calibration,
        "ood": {"method": "Mahalanobis distance to the nearest class mean, shared shrunk covariance of "
                          "training features; divided by its validation quantile",
                "quantile": OOD_QUANTILE, "feature_dim": int(model.ood_means.shape[1]), "shrinkage": OOD_SHRINKAGE},
        "precision": {"bf16_allowed": precision["bf16_call_agreement"] >= 0.99, **precision},
        "weights": {**weights, "bytes": (out / weights["file"]).stat().st_size,
                    "parameters": int(sum(p.numel() for p in model.parameters()))},
        "intended_use": INTENDED_USE,
        "training_data": _training_data_record(args, data, classes),
        "test_data": {"counts": count_table({"test": data["test"]}, classes),
                      "split": "by source, case, slide or synthetic seed -- never by tile"},
        "metrics": metrics,
        "performance": performance,
        "training": {"seed": args.seed, "steps": chosen["info"]["steps_run"], "best_step": chosen["info"]["best_step"],
                     "batch_size": args.batch_size, "lr": args.lr, "optimiser": "AdamW (wd 0.05), one-cycle",
                     "loss": "cross-entropy, label smoothing 0.05", "precision": "bf16 autocast",
                     "seconds": round(seconds, 1), "history": chosen["info"]["history"],
                     "command": "python -m pipeline train " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])},
        "architecture_selection": _selection_record(args, candidates, chosen),
        "limitations": list(LIMITATIONS),
    }
