"""Train a tile classifier and write ``models/<model_id>/``: weights (state_dict) + card.json.

Steps: gather patches (labelled folders, synthetic, annotated slides; train_data.py) split by case / slide /
source / seed; train with class-balanced sampling and histology augmentation (bf16 autocast on CPU); keep the
checkpoint with the best validation loss; fit the temperature on validation tiles; fit the OOD statistics
(class means and shared covariance of training features); evaluate the test split per source (AUC with
bootstrap CIs, confusion matrix); measure bf16-vs-fp32 differences and tiles/s; write weights and card
(train_card.py). Public: :func:`train_one`, :func:`train_candidates`, :func:`choose`, :func:`calibrate_and_fit_ood`,
:func:`test_metrics`, :func:`gather`, the model passes (:func:`run_tiles`, :func:`fit_ood`, :func:`measure_speed`)
and the CLI (:func:`configure_parser`, :func:`run`).

With several ``--architecture`` values each is trained with an equal share of the budget and the card's
``architecture_selection`` records them all; the most accurate one that reaches ``--min-tiles-per-s`` wins.
Seeded: the same inputs, seed and thread count give the same weights.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import atomic
from pipeline.errors import TriageError
from pipeline.he.models import TileClassifier, save_weights
from pipeline.he.slide_call import CLASSES
from pipeline.training.train_card import OOD_QUANTILE, OOD_SHRINKAGE, build_card
from pipeline.training.train_data import (
    SPLITS,
    Patch,
    balanced_sampler_weights,
    colour_augment,
    crop_batch,
    load_patch_folder,
    pad_small_patches,
    render_synthetic,
    render_textures,
    tiles_from_annotations,
)
from pipeline.training.train_metrics import evaluate, expected_calibration_error, fit_temperature, nll, softmax

log = logging.getLogger(__name__)
EVAL_CROPS_MAX = 4  # evaluation tiles per large patch: up to a 2 x 2 grid of non-overlapping centre crops


# ---- data -------------------------------------------------------------------------------------------------
def eval_tiles(patches: list[Patch], tile_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping crops (up to EVAL_CROPS_MAX per patch, centred) and the patch index of each."""
    tiles, owner = [], []
    for i, p in enumerate(patches):
        h, w = p.image.shape[:2]
        ny, nx = min(2, h // tile_px), min(2, w // tile_px)
        y0, x0 = (h - ny * tile_px) // 2, (w - nx * tile_px) // 2
        for r in range(ny):
            for c in range(nx):
                y, x = y0 + r * tile_px, x0 + c * tile_px
                tiles.append(p.image[y:y + tile_px, x:x + tile_px])
                owner.append(i)
    if not tiles:
        return np.zeros((0, tile_px, tile_px, 3), np.uint8), np.zeros(0, int)
    return np.stack(tiles), np.array(owner)


def channel_stats(patches: list[Patch], max_patches: int = 500, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel RGB mean and std (0-1 scale) of the training patches (a sample of them)."""
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(patches))[:max_patches]
    px = np.concatenate([patches[i].image[::4, ::4].reshape(-1, 3) for i in pick]).astype(np.float64) / 255.0
    return [round(float(v), 4) for v in px.mean(0)], [round(float(v), 4) for v in px.std(0)]


# ---- model passes -----------------------------------------------------------------------------------------
@torch.inference_mode()
def run_tiles(model: TileClassifier, tiles: np.ndarray, batch_size: int = 64, bf16: bool = True,
              features: bool = False) -> np.ndarray:
    """Uncalibrated logits (or pooled features) of uint8 NHWC tiles, in float32."""
    out = []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for a in range(0, len(tiles), batch_size):
            f = model.features(torch.from_numpy(np.ascontiguousarray(tiles[a:a + batch_size])))
            out.append((f if features else model.head(f.float())).float().numpy())
    dim = model.ood_means.shape[1] if features else model.num_classes
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def fit_ood(train_feats: np.ndarray, train_labels: np.ndarray, val_feats: np.ndarray, n_classes: int,
            shrinkage: float = OOD_SHRINKAGE, quantile: float = OOD_QUANTILE):
    """Class means, shrunk shared precision and the validation distance quantile (Mahalanobis OOD score)."""
    feats = train_feats.astype(np.float64)
    means = np.stack([feats[train_labels == c].mean(0) if (train_labels == c).any() else feats.mean(0)
                      for c in range(n_classes)])
    centred = feats - means[train_labels]
    cov = centred.T @ centred / max(1, len(feats) - n_classes)
    dim = cov.shape[0]
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / dim * np.eye(dim)
    precision = np.linalg.inv(cov)
    diff = val_feats.astype(np.float64)[:, None, :] - means[None]
    dist = np.sqrt(np.einsum("bcd,de,bce->bc", diff, precision, diff).min(1).clip(0))
    scale = float(np.quantile(dist, quantile)) if len(dist) else 1.0
    return means, precision, scale


def measure_speed(model: TileClassifier, tile_px: int, batch_size: int, seconds: float = 4.0,
                  bf16: bool = True) -> float:
    """Bare forward-pass tiles/s on random uint8 tiles (channels_last, inference_mode)."""
    model = model.eval().to(memory_format=torch.channels_last)
    x = torch.randint(0, 256, (batch_size, tile_px, tile_px, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model.score(x)
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            model.score(x)
            n += batch_size
    return n / (time.perf_counter() - start)


# ---- training ---------------------------------------------------------------------------------------------
def train_one(arch: str, data: dict[str, list[Patch]], classes: list[str], tile_px: int, *, steps: int,
              batch_size: int, lr: float, seed: int, time_budget_s: float, eval_every: int,
              mean, std) -> tuple[TileClassifier, dict]:
    """Train one architecture; return the best-validation-loss model (temperature 1) and its history."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model = TileClassifier(arch, len(classes), mean, std).to(memory_format=torch.channels_last)
    train = data["train"]
    weights = balanced_sampler_weights(train, len(classes))
    labels = torch.tensor([p.label for p in train])
    val_tiles, val_owner = eval_tiles(data["val"], tile_px)
    val_labels = np.array([data["val"][i].label for i in val_owner], int)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    best = {"val_nll": math.inf, "step": 0, "state": None}
    history, start = [], time.perf_counter()
    step = 0
    for step in range(1, steps + 1):
        model.train()
        idx = rng.choice(len(train), size=batch_size, p=weights)
        x = torch.from_numpy(crop_batch([train[i].image for i in idx], tile_px, rng, train=True))
        x = colour_augment(x.permute(0, 3, 1, 2).float(), gen).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        out_of_time = time.perf_counter() - start > time_budget_s
        if step % eval_every == 0 or step == steps or out_of_time:
            model.eval()
            val_logits = run_tiles(model, val_tiles)
            v_nll = nll(val_logits, val_labels) if len(val_labels) else loss.item()
            v_acc = float((val_logits.argmax(1) == val_labels).mean()) if len(val_labels) else None
            history.append({"step": step, "train_loss": round(loss.item(), 4), "val_nll": round(v_nll, 4),
                            "val_accuracy": None if v_acc is None else round(v_acc, 4),
                            "seconds": round(time.perf_counter() - start, 1)})
            log.info("%s step %d: loss %.3f, val nll %.3f, val acc %s", arch, step, loss.item(), v_nll,
                     "n/a" if v_acc is None else f"{v_acc:.3f}")
            if v_nll < best["val_nll"]:
                best = {"val_nll": v_nll, "step": step,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        if out_of_time:
            log.warning("%s: time budget of %.0f s reached at step %d of %d", arch, time_budget_s, step, steps)
            break
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    return model.eval(), {"history": history, "best_step": best["step"], "steps_run": step,
                          "seconds": round(time.perf_counter() - start, 1)}


def calibrate_and_fit_ood(model: TileClassifier, data: dict[str, list[Patch]], tile_px: int) -> dict:
    """Set the temperature (validation NLL) and the OOD buffers; return the calibration record."""
    val_tiles, val_owner = eval_tiles(data["val"], tile_px)
    val_labels = np.array([data["val"][i].label for i in val_owner], int)
    val_logits = run_tiles(model, val_tiles)
    temperature = fit_temperature(val_logits, val_labels) if len(val_labels) else 1.0
    model.temperature.fill_(temperature)
    tr_tiles, tr_owner = eval_tiles(data["train"], tile_px)
    tr_labels = np.array([data["train"][i].label for i in tr_owner], int)
    means, precision, scale = fit_ood(run_tiles(model, tr_tiles, features=True), tr_labels,
                                      run_tiles(model, val_tiles, features=True), model.num_classes)
    model.ood_means.copy_(torch.from_numpy(means).float())
    model.ood_precision.copy_(torch.from_numpy(precision).float())
    model.ood_scale.fill_(scale)
    calib = {"method": "temperature", "temperature": round(temperature, 4)}
    if len(val_labels):
        calib.update(nll_before=round(nll(val_logits, val_labels), 4),
                     nll_after=round(nll(val_logits, val_labels, temperature), 4),
                     ece_before=round(expected_calibration_error(softmax(val_logits), val_labels), 4),
                     ece_after=round(expected_calibration_error(softmax(val_logits / temperature), val_labels), 4),
                     n_val_tiles=int(len(val_labels)))
    return calib


def test_metrics(model: TileClassifier, patches: list[Patch], classes: list[str], tile_px: int,
                 n_boot: int, seed: int) -> tuple[dict, dict]:
    """Per-source and overall metrics on test patches (probabilities averaged over each patch's tiles),
    and the bf16-vs-fp32 comparison on the test tiles."""
    tiles, owner = eval_tiles(patches, tile_px)
    if not len(tiles):
        return {}, {"bf16_max_prob_diff": 0.0, "bf16_call_agreement": 1.0, "n_tiles": 0}
    t = float(model.temperature)
    probs_bf16 = softmax(run_tiles(model, tiles, bf16=True) / t)
    probs_fp32 = softmax(run_tiles(model, tiles, bf16=False) / t)
    precision = {"bf16_max_prob_diff": round(float(np.abs(probs_bf16 - probs_fp32).max()), 4),
                 "bf16_call_agreement": round(float((probs_bf16.argmax(1) == probs_fp32.argmax(1)).mean()), 4),
                 "n_tiles": int(len(tiles))}
    patch_probs = np.zeros((len(patches), len(classes)))
    np.add.at(patch_probs, owner, probs_bf16)
    patch_probs /= np.bincount(owner, minlength=len(patches))[:, None].clip(1)
    labels = np.array([p.label for p in patches])
    sources = np.array([p.source for p in patches])
    metrics = {"unit": "patch (mean probability over up to 4 tiles of it), bf16 inference",
               "all": evaluate(patch_probs, labels, classes, n_boot, seed), "per_source": {}}
    for s in sorted({str(s) for s in sources}):
        sel = sources == s
        metrics["per_source"][s] = evaluate(patch_probs[sel], labels[sel], classes, n_boot, seed)
        metrics["per_source"][s]["groups"] = sorted({p.group for p, k in zip(patches, sel, strict=True) if k})[:20]
    return metrics, precision


# ---- CLI --------------------------------------------------------------------------------------------------
def configure_parser(parser) -> None:
    parser.add_argument("--out", required=True, help="model directory to write (models/<model_id>)")
    parser.add_argument("--model-id", default=None, help="model id (default: the --out directory name)")
    parser.add_argument("--architecture", default="small_cnn",
                        help="architecture, or several comma-separated to compare (pipeline.he.models.ARCHITECTURES)")
    parser.add_argument("--patches", action="append", default=[],
                        help="labelled patch folder <class>/<image> (repeatable); labels CSV: <folder>/labels.csv")
    parser.add_argument("--assume-mpp", action="append", default=[], metavar="DATASET=MPP",
                        help="um/px for labels-CSV rows without mpp_um whose dataset contains DATASET")
    parser.add_argument("--annotated", action="append", default=[], nargs="+", metavar="SLIDE GEOJSON [MPP]",
                        help="an annotated slide: slide file, QuPath GeoJSON, optional MPP override (repeatable)")
    parser.add_argument("--synthetic", type=int, default=0,
                        help="synthetic training patches per class (validation and test get a quarter each)")
    parser.add_argument("--textures", type=int, default=0,
                        help="procedural texture patches per class (validation and test get a quarter each)")
    parser.add_argument("--tile-px", type=int, default=224, help="tile side (px) at --mpp")
    parser.add_argument("--mpp", type=float, default=1.0, help="um/px of the tiles")
    parser.add_argument("--steps", type=int, default=2000, help="optimiser steps per architecture")
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    parser.add_argument("--eval-every", type=int, default=200, help="validate every this many steps")
    parser.add_argument("--time-budget-min", type=float, default=20.0, help="training time for all architectures")
    parser.add_argument("--min-tiles-per-s", type=float, default=300.0,
                        help="architectures slower than this (bare forward, bf16) are not chosen if a faster one is")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for AUC CIs")
    parser.add_argument("--cache-dir", default=None, help="cache for rendered synthetic patches")
    parser.add_argument("--speed-seconds", type=float, default=4.0, help="duration of each tiles/s measurement")


def gather(args, classes: list[str]) -> dict[str, list[Patch]]:
    assume = {}
    for item in args.assume_mpp:
        key, _, value = item.rpartition("=")
        try:
            assume[key] = float(value)
        except ValueError:
            raise TriageError(f"--assume-mpp {item!r}: expected DATASET=MPP (e.g. Osteosarcoma=1.0)") from None
    patches: list[Patch] = []
    for folder in args.patches:
        patches += load_patch_folder(folder, Path(folder) / "labels.csv", classes, args.mpp, assume)
    for i, spec in enumerate(args.annotated):
        if len(spec) not in (2, 3):
            raise TriageError(f"--annotated {' '.join(spec)}: give SLIDE GEOJSON [MPP]")
        patches += tiles_from_annotations(spec[0], spec[1], classes, args.tile_px, args.mpp,
                                          mpp=float(spec[2]) if len(spec) == 3 else None, seed=args.seed + i)
    patches = pad_small_patches(patches, args.tile_px, args.seed)
    if args.synthetic:
        size = args.tile_px + 32  # room for crop and scale jitter
        n_eval = max(1, args.synthetic // 4)
        for split, n, seed0 in (("train", args.synthetic, 1_000_000), ("val", n_eval, 2_000_000),
                                ("test", n_eval, 3_000_000)):
            patches += render_synthetic(n, classes, args.mpp, size, args.seed * 10_000_000 + seed0, split,
                                        args.cache_dir)
    if args.textures:
        size = args.tile_px + 32
        n_eval = max(1, args.textures // 4)
        for split, n, seed0 in (("train", args.textures, 1_000_000), ("val", n_eval, 2_000_000),
                                ("test", n_eval, 3_000_000)):
            patches += render_textures(n, classes, args.mpp, size, args.seed * 10_000_000 + seed0, split,
                                       args.threads)
    data = {s: [p for p in patches if p.split == s] for s in SPLITS}
    if not data["train"]:
        raise TriageError("no training patches: give --patches, --synthetic, --textures or --annotated")
    missing = [c for i, c in enumerate(classes) if not any(p.label == i for p in data["train"])]
    if missing:
        raise TriageError(f"no training patches of class {', '.join(missing)}")
    return data


def train_candidates(args, data: dict[str, list[Patch]], classes: list[str], mean, std) -> list[dict]:
    """Train each ``--architecture`` with an equal share of the time budget; validation metrics and tiles/s."""
    archs = [a.strip() for a in args.architecture.split(",") if a.strip()]
    budget_s = args.time_budget_min * 60 / len(archs)
    candidates = []
    for arch in archs:
        model, info = train_one(arch, data, classes, args.tile_px, steps=args.steps, batch_size=args.batch_size,
                                lr=args.lr, seed=args.seed, time_budget_s=budget_s, eval_every=args.eval_every,
                                mean=mean, std=std)
        vt, vo = eval_tiles(data["val"], args.tile_px)
        vl = np.array([data["val"][i].label for i in vo], int)
        val = evaluate(softmax(run_tiles(model, vt)), vl, classes, n_boot=0) if len(vl) else {}
        speed = measure_speed(model, args.tile_px, 64, args.speed_seconds)
        candidates.append({"architecture": arch, "model": model, "info": info, "val": val, "tiles_per_s": speed})
        log.info("%s: val balanced accuracy %s, %.0f tiles/s", arch, val.get("balanced_accuracy"), speed)
    return candidates


def choose(candidates: list[dict], min_tiles_per_s: float) -> dict:
    """The most accurate candidate (validation balanced accuracy) among those fast enough (all if none is)."""
    fast = [c for c in candidates if c["tiles_per_s"] >= min_tiles_per_s] or candidates
    return max(fast, key=lambda c: ((c["val"].get("balanced_accuracy") or 0.0), c["tiles_per_s"]))


def _performance_record(model: TileClassifier, args) -> dict:
    speed_fp32 = measure_speed(model, args.tile_px, 64, args.speed_seconds, bf16=False)
    speed_bf16 = measure_speed(model, args.tile_px, 64, args.speed_seconds, bf16=True)
    return {"tiles_per_s": round(speed_bf16, 1), "tiles_per_s_fp32": round(speed_fp32, 1),
            "precision": "bf16 autocast, channels_last", "batch_size": 64, "threads": args.threads,
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
                       f"torch threads, torch {torch.__version__}",
            "measured": "bare forward pass (TileClassifier.score) on random uint8 tiles"}


def run(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    classes = list(CLASSES)
    out = Path(args.out)
    t0 = time.perf_counter()
    data = gather(args, classes)
    log.info("patches: %s", {s: len(v) for s, v in data.items()})
    mean, std = channel_stats(data["train"], seed=args.seed)
    candidates = train_candidates(args, data, classes, mean, std)
    chosen = choose(candidates, args.min_tiles_per_s)
    model = chosen["model"]
    calibration = calibrate_and_fit_ood(model, data, args.tile_px)
    metrics, precision = test_metrics(model, data["test"], classes, args.tile_px, args.bootstrap, args.seed)
    performance = _performance_record(model, args)
    weights_file = "weights.pt"
    sha = save_weights(model, out / weights_file)
    card = build_card(args, out, model, classes=classes, data=data, normalisation={"mean": mean, "std": std},
                      calibration=calibration, precision=precision, weights={"file": weights_file, "sha256": sha},
                      metrics=metrics, performance=performance, candidates=candidates, chosen=chosen,
                      seconds=time.perf_counter() - t0)
    atomic.write_json(out / "card.json", card)
    log.info("wrote %s (%s, %s); test: %s", out, chosen["architecture"], sha[:12],
             {s: m.get("balanced_accuracy") for s, m in metrics.get("per_source", {}).items()})
