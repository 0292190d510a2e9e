"""``python -m pipeline train-model``: fit the tile classifier on real H&E images, select and calibrate it by
leave-one-source-out (LOSO) validation, and write ``<out>/weights.pt`` + ``card.json``.

Steps (all seeded; step counts, not wall-clock, decide the result):

1. Real labelled images (``--labels`` CSVs; pipeline.training.labelled_images), each source a LOSO fold.
2. ImageNet EfficientNet-Lite0 (frozen) features of training crops (scale jitter, flips, HED colour jitter) and of
   evaluation grid tiles, pooled at several depths (block 10, block 14, head), in colour and in grey.
3. Candidates: a linear head on each (depth, colour) feature set. For each, every source's evaluation tiles are
   scored by a head fitted without that source: the pooled out-of-fold predictions give the candidate's macro-AUC
   and tumour-vs-non-tumour AUC (pipeline.training.real_metrics, the ``evaluate`` verb's code). The highest
   macro-AUC wins.
   The shipped small CNN (``--baseline``) is scored on the same tiles of the sources it never saw.
4. Calibration: temperature fitted on the winner's out-of-fold logits. OOD: Mahalanobis statistics of all training
   features; the distance scale is the ``--ood-quantile`` of the out-of-fold distances of real tiles from sources
   the statistics never saw, so a score > 1 reads "unlike any real H&E source seen in training".
5. The final head is fitted on all sources; its backbone keeps the ImageNet weights.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import atomic
from pipeline.errors import TriageError
from pipeline.he.models import CARD_VERSION, INTENDED_USE, TileClassifier, lite0_name, save_weights
from pipeline.he.slide_call import CLASSES
from pipeline.training.heads import balanced_weights, fit_head, fit_ood, loso_predictions
from pipeline.training.labelled_images import parse_assume_mpp, read_labels
from pipeline.training.real_metrics import real_metrics
from pipeline.training.tile_features import cached_taps
from pipeline.training.train_metrics import expected_calibration_error, fit_temperature, nll, softmax

log = logging.getLogger(__name__)
TAPS = (10, 14)
CANDIDATES = tuple((tap, grey) for grey in (False, True) for tap in ("b10", "b14", "head"))


def configure_parser(parser) -> None:
    parser.add_argument("--labels", action="append", required=True, help="labels CSV (repeatable)")
    parser.add_argument("--assume-mpp", action="append", default=[], metavar="SUBSTRING=MPP")
    parser.add_argument("--out", required=True, help="output directory (weights.pt + card.json)")
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--mpp", type=float, default=1.0, help="um/px of the model's tiles")
    parser.add_argument("--tile-px", type=int, default=224)
    parser.add_argument("--train-crops", type=int, default=8, help="random training crops per image")
    parser.add_argument("--eval-tiles", type=int, default=4, help="evaluation grid tiles per image (at most)")
    parser.add_argument("--steps", type=int, default=400, help="full-batch optimiser steps per head")
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--ood-quantile", type=float, default=0.95)
    parser.add_argument("--baseline", default="models/triage-smallcnn-v1", help="model scored beside the candidates")
    parser.add_argument("--finetune-block", type=int, metavar="K",
                        help="also compare partial fine-tuning: block K (0-15) of the grey backbone + a linear head, "
                             "trained on the frozen activations entering it (K=14: ~20 min more on 2 cores); "
                             "reported, not shipped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", help="keep extracted features here")


def fold_of(source: str) -> str:
    """LOSO fold of a source: sources of one dataset family (kather-crc-val / kather-nct, oral-scc-guan /
    oral-scc-rahman) form one fold; the first word names the family."""
    return source.split("-")[0]


def imagenet_lite0() -> torch.nn.Module:
    from pipeline.he.efficientnet_lite import efficientnet_lite0, imagenet_state_dict

    net = efficientnet_lite0()
    net.load_state_dict(imagenet_state_dict(), strict=True)
    return net.eval()


def baseline_metrics(model_dir: str, records, args) -> dict | None:
    """The baseline model on the evaluation tiles of the sources its card does not list as training data."""
    from pipeline.he.models import load_model
    from pipeline.training.evaluate import score_images

    if not model_dir or not Path(model_dir, "card.json").is_file():
        return None
    model, card = load_model(model_dir)
    seen = [Path(p).resolve() for p in card.get("training_data", {}).get("patch_folders", [])]
    unseen = [r for r in records if not any(r.path.resolve().is_relative_to(p) for p in seen)]
    from pipeline.he.tile_check import default_params

    probs, ood, _, labels, owners = score_images(model, card, unseen, args.eval_tiles, 64, default_params())
    sources = np.array([unseen[i].source for i in owners])
    m = real_metrics(probs, labels, sources, owners, list(CLASSES), ood, n_boot=0)["pooled"]
    return {"model": card["model_id"], "architecture": card["architecture"],
            "scored_on": sorted({r.source for r in unseen}), "macro_auc": m["macro_auc"],
            "tumour_vs_non_tumour_auc": m["tumour_vs_non_tumour_auc"], "accuracy": m["accuracy"],
            "ood_over_threshold": m["ood_over_threshold"]}


def finetune_logits(net, records, folds: np.ndarray, args) -> np.ndarray:
    """Out-of-fold logits of the partial fine-tuning candidate (pipeline.training.finetune) on the evaluation tiles."""
    from pipeline.training.finetune import block_inputs, loso_finetune
    from pipeline.training.tile_features import tile_set

    k = args.finetune_block
    tiles, y_tr, o_tr = tile_set(records, args.mpp, args.tile_px, args.train_crops, args.seed)
    acts_tr = block_inputs(net, tiles, k, augment=True, grey=True, seed=args.seed)
    tiles, _, o_val = tile_set(records, args.mpp, args.tile_px, args.eval_tiles, None)
    acts_val = block_inputs(net, tiles, k, augment=False, grey=True)
    return loso_finetune(net, k, acts_tr, y_tr, acts_val, folds[o_tr], folds[o_val], len(CLASSES),
                         steps=args.steps, seed=args.seed)


@dataclass
class Validation:
    """The real evaluation tiles: true class, owning image, source and LOSO fold of each; the baseline mask."""

    labels: np.ndarray
    owners: np.ndarray
    sources: np.ndarray
    folds: np.ndarray
    on_baseline: np.ndarray | None

    def summary(self, logits: np.ndarray) -> dict:
        """A candidate's pooled out-of-fold figures (and on the baseline's sources, like for like)."""
        m = real_metrics(softmax(logits), self.labels, self.sources, self.owners, list(CLASSES), n_boot=0)["pooled"]
        out = {"loso_macro_auc": m["macro_auc"], "loso_tumour_vs_non_tumour_auc": m["tumour_vs_non_tumour_auc"],
               "loso_accuracy": m["accuracy"]}
        if self.on_baseline is not None:
            sel = self.on_baseline
            b = real_metrics(softmax(logits[sel]), self.labels[sel], self.sources[sel], self.owners[sel],
                             list(CLASSES), n_boot=0)["pooled"]
            out |= {"baseline_sources_macro_auc": b["macro_auc"],
                    "baseline_sources_tumour_vs_non_tumour_auc": b["tumour_vs_non_tumour_auc"]}
        return out


def gather_features(net, records, args) -> dict[bool, tuple[dict, dict]]:
    """{grey: (training-crop taps, evaluation-tile taps)} for colour and grey input."""
    feats = {}
    for grey in (False, True):
        common = dict(target_mpp=args.mpp, tile_px=args.tile_px, grey=grey, taps=TAPS, cache_dir=args.cache_dir)
        feats[grey] = (cached_taps(net, records, n_per_image=args.train_crops, seed=args.seed, **common),
                       cached_taps(net, records, n_per_image=args.eval_tiles, seed=None, **common))
    return feats


def compare_candidates(feats, val: Validation, folds_train: np.ndarray, fit_kw: dict, finetune=None
                       ) -> tuple[list[dict], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Every candidate's LOSO summary, and the out-of-fold (logits, OOD distance) of the frozen ones."""
    candidates, oof = [], {}
    for tap, grey in CANDIDATES:
        tr, va = feats[grey]
        logits, dist = loso_predictions({"features": tr[tap], "labels": tr["labels"]}, {"features": va[tap]},
                                        folds_train, val.folds, len(CLASSES), "linear", **fit_kw)
        name = lite0_name(tap, grey)
        oof[name] = (logits, dist)
        candidates.append({"architecture": name, "features": f"ImageNet EfficientNet-Lite0, pooled at {tap}, "
                           f"{'grey' if grey else 'colour'} input, frozen", "head": "linear", **val.summary(logits)})
        log.info("%s: %s", name, candidates[-1])
    if finetune is not None:
        block, logits = finetune
        candidates.append({"architecture": f"efficientnet_lite0_grey_finetune_b{block}",
                           "features": f"ImageNet EfficientNet-Lite0, grey input, block {block} fine-tuned (blocks "
                           "before it frozen)", "head": "linear", "shippable": False, **val.summary(logits)})
        log.info("partial fine-tuning: %s", candidates[-1])
    return candidates, oof


def assemble_model(net, name: str, head, temperature: float, means, precision, scale: float) -> TileClassifier:
    """The shipped classifier: ImageNet backbone (up to the candidate's tap), fitted head, calibration, OOD."""
    model = TileClassifier(name, len(CLASSES))
    keep = model.backbone.state_dict()
    model.backbone.load_state_dict({k: v for k, v in net.state_dict().items() if k in keep and not
                                    k.startswith("_fc")}, strict=True)
    model.head.load_state_dict(head.state_dict())
    model.temperature.fill_(temperature)
    model.ood_means.copy_(torch.from_numpy(means))
    model.ood_precision.copy_(torch.from_numpy(precision))
    model.ood_scale.fill_(scale)
    return model.eval()


def run(args) -> None:
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    records = [r for path in args.labels for r in read_labels(path, parse_assume_mpp(args.assume_mpp))]
    if len({fold_of(r.source) for r in records}) < 3:
        raise TriageError("train-model needs images from at least 3 sources for leave-one-source-out validation")
    net = imagenet_lite0()
    folds = np.array([fold_of(r.source) for r in records])
    feats = gather_features(net, records, args)
    owners = feats[False][1]["owners"]
    sources = np.array([records[i].source for i in owners])
    baseline = baseline_metrics(args.baseline, records, args)
    val = Validation(feats[False][1]["labels"], owners, sources, folds[owners],
                     np.isin(sources, baseline["scored_on"]) if baseline else None)
    folds_train = folds[feats[False][0]["owners"]]
    fit_kw = dict(steps=args.steps, weight_decay=args.weight_decay, seed=args.seed)
    finetune = None if args.finetune_block is None else (args.finetune_block,
                                                          finetune_logits(net, records, folds, args))
    candidates, oof = compare_candidates(feats, val, folds_train, fit_kw, finetune)

    best = max((c for c in candidates if c.get("shippable", True)),
               key=lambda c: (c["loso_macro_auc"] or 0, c["loso_tumour_vs_non_tumour_auc"] or 0))
    name = best["architecture"]
    tap, grey = next((t, g) for t, g in CANDIDATES if lite0_name(t, g) == name)
    logits, dist = oof[name]
    temperature = fit_temperature(logits, val.labels)
    tr = feats[grey][0]
    head = fit_head(tr[tap], tr["labels"], balanced_weights(tr["labels"], folds_train, len(CLASSES)),
                    len(CLASSES), "linear", **fit_kw)
    means, precision = fit_ood(tr[tap], tr["labels"], len(CLASSES))
    scale = float(np.quantile(dist, args.ood_quantile))
    model = assemble_model(net, name, head, temperature, means, precision, scale)
    loso = real_metrics(softmax(logits / temperature), val.labels, val.sources, val.owners, list(CLASSES),
                        dist / scale)
    selection = {"rule": "highest pooled leave-one-source-out macro-AUC on real tiles", "candidates": candidates,
                 "chosen": name, "baseline": baseline}
    write_card(model, args, records, folds, logits, val.labels, temperature, loso, selection, t0)


def write_card(model, args, records, folds, logits, labels, temperature, loso, selection, t0) -> None:
    """weights.pt and card.json (schema: model_card.schema.yaml) under ``args.out``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sha = save_weights(model, out / "weights.pt")
    probs = softmax(logits / temperature)
    card = {
        "card_version": CARD_VERSION, "model_id": args.model_id, "architecture": model.architecture,
        "classes": list(CLASSES), "tile_px": args.tile_px, "mpp": args.mpp,
        "normalisation": {"mean": [round(v, 4) for v in (model.mean.view(3) / 255).tolist()],
                          "std": [round(v, 4) for v in (model.std.view(3) / 255).tolist()]},
        "calibration": {"method": "temperature", "temperature": round(float(temperature), 4),
                        "fitted_on": "pooled leave-one-source-out logits of real evaluation tiles",
                        "nll_before": round(nll(logits, labels), 4),
                        "nll_after": round(nll(logits, labels, temperature), 4),
                        "ece_before": round(expected_calibration_error(softmax(logits), labels), 4),
                        "ece_after": round(expected_calibration_error(probs, labels), 4)},
        "ood": {"method": "Mahalanobis distance of the pooled features to the nearest class mean (shared shrunk "
                          "covariance of all training features), divided by the quantile below of the "
                          "leave-one-source-out distances of real evaluation tiles",
                "quantile": args.ood_quantile, "feature_dim": int(model.ood_means.shape[1]), "shrinkage": 0.1,
                "loso_real_tiles_over_threshold": loso["pooled"]["ood_over_threshold"]},
        "precision": bf16_agreement(model, records, args),
        "weights": {"file": "weights.pt", "sha256": sha, "bytes": (out / "weights.pt").stat().st_size,
                    "parameters": int(sum(p.numel() for p in model.parameters()))},
        "intended_use": INTENDED_USE,
        "architecture_selection": selection,
        "training_data": training_data(records, args, folds),
        "test_data": {"method": "leave-one-source-out: each source's tiles scored by a head fitted without it",
                      "folds": sorted(set(folds.tolist()))},
        "metrics": {"loso": loso},
        "performance": measure_speed(model, args),
        "limitations": LIMITATIONS,
        "training": {"command": "python -m pipeline " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["train-model"]
                     else "python -m pipeline train-model ...", "seed": args.seed, "steps": args.steps,
                     "seconds": round(time.perf_counter() - t0, 1), "threads": args.threads,
                     "torch": torch.__version__, "machine": platform.machine()},
    }
    atomic.write_json(out / "card.json", card)
    log.info("wrote %s: %s, LOSO macro-AUC %s, tumour-vs-non-tumour AUC %s", out, model.architecture,
             loso["pooled"]["macro_auc"], loso["pooled"]["tumour_vs_non_tumour_auc"])


LIMITATIONS = [
    "Research / decision support only; not validated for clinical use.",
    "Real sarcoma comes from two sources only (one centre's five soft-tissue sarcoma patients, colour-normalised; "
    "one osteosarcoma case): the sarcoma class does not transfer from one to the other (see the LOSO table).",
    "Frozen ImageNet features: what separates the classes within a source separates sources too; a source the "
    "model never saw is often out of distribution, and the slide call then refers.",
    "Scales of sources that state none were assumed per source (training_data.assumed_mpp).",
]


def training_data(records, args, folds) -> dict:
    counts: dict[str, dict[str, int]] = {}
    for r in records:
        counts.setdefault(r.source, {c: 0 for c in CLASSES})[r.label] += 1
    return {"labels_csv": [str(p) for p in args.labels], "assumed_mpp": list(args.assume_mpp),
            "real_sources": sorted(counts), "images_per_source": counts,
            "cases": len({r.case for r in records}), "train_crops_per_image": args.train_crops,
            "augmentation": "random crops, scale jitter +-25 % (log), flips, 90-degree rotations, HED stain jitter "
                            "(Tellez et al. 2019), brightness/contrast, blur (10 %), greyscale (5 %)",
            "licences": "see ../shared/data/train/README.md and ../shared/data/patches/labels.csv; none allows "
                        "clinical or commercial use"}


@torch.no_grad()
def bf16_agreement(model, records, args) -> dict:
    from pipeline.training.tile_features import tile_set

    tiles, _, _ = tile_set(records[:: max(1, len(records) // 64)], args.mpp, args.tile_px, 2, None)
    x = torch.from_numpy(tiles)
    p32, _ = model.score(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p16, _ = model.score(x)
    return {"bf16_allowed": True, "bf16_max_prob_diff": round(float((p32 - p16).abs().max()), 4),
            "bf16_call_agreement": round(float((p32.argmax(1) == p16.argmax(1)).float().mean()), 4),
            "n_tiles": len(tiles)}


@torch.no_grad()
def measure_speed(model, args, batch: int = 64, repeats: int = 3) -> dict:
    x = torch.randint(0, 256, (batch, args.tile_px, args.tile_px, 3), dtype=torch.uint8)
    m = model.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m.score(x)
        t = time.perf_counter()
        for _ in range(repeats):
            m.score(x)
        dt = (time.perf_counter() - t) / repeats
    return {"tiles_per_s": round(batch / dt, 1), "batch_size": batch, "threads": torch.get_num_threads(),
            "precision": "bf16 autocast, channels_last", "measured": "bare forward pass (TileClassifier.score)",
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"}
