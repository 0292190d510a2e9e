"""``python -m pipeline evaluate``: a model on a user's labelled real patches.

Input: a labels CSV (``path,label,source,mpp``; ../shared/data/train and ../shared/data/patches' own CSVs are
read too -- pipeline.training.labelled_images). Each image is cut into up to ``--tiles-per-image`` tiles on a
grid at the model's um/px (smaller images reflect-padded, never enlarged), scored by the model (calibrated
probabilities and OOD score), and summarised per source and pooled by pipeline.training.real_metrics -- the same
code that writes the card's figures. Labels outside the model's classes (necrosis, benign tumour, normal...)
count as non_tumour. Images without a stated um/px are refused unless ``--assume-mpp`` gives one.

A table goes to stdout; ``--json`` writes every figure. Sources the model was trained on are named: their
figures are not held-out results.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.errors import TriageError

log = logging.getLogger(__name__)


def configure_parser(parser) -> None:
    parser.add_argument("labels", help="labels CSV: path,label,source,mpp (paths relative to the CSV)")
    parser.add_argument("--model", help="model directory (card.json + weights); default: the config's default model")
    parser.add_argument("--assume-mpp", action="append", default=[], metavar="SUBSTRING=MPP",
                        help="um/px for rows without one whose path or source contains SUBSTRING (repeatable)")
    parser.add_argument("--tiles-per-image", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-tile-check", action="store_true",
                        help="OOD share from the model's score alone (default: the workflow's, with the H&E tile "
                             "check of config tile_check's defaults)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", dest="json_out", help="write all figures to this JSON file")


def score_images(model, card: dict, records, tiles_per_image: int, batch_size: int, tile_check: dict | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities (N, C), OOD score (N,), the model's own OOD score (N,), true class index (N,), owning record
    index (N,)) of grid tiles. The OOD score is the workflow's (score-tiles'): the larger of the model's and the
    H&E tile check's (:mod:`pipeline.he.tile_check`, thresholds ``tile_check``; None: the model's alone)."""
    import torch

    from pipeline.he.tile_check import tile_check_scores
    from pipeline.training.labelled_images import image_tiles, load_rgb

    classes = list(card["classes"])
    probs, ood, checked, labels, owners = [], [], [], [], []
    for i, rec in enumerate(records):
        tiles = image_tiles(load_rgb(rec.path), rec.mpp, card["mpp"], card["tile_px"], tiles_per_image)
        with torch.no_grad():
            for a in range(0, len(tiles), batch_size):
                p, o = model.score(torch.from_numpy(tiles[a:a + batch_size]))
                probs.append(p.numpy())
                ood.append(o.numpy())
        checked.append(tile_check_scores(tiles, tile_check) if tile_check else np.zeros(len(tiles), np.float32))
        labels += [classes.index(rec.label)] * len(tiles)
        owners += [i] * len(tiles)
    model_ood = np.concatenate(ood)
    return (np.concatenate(probs), np.maximum(model_ood, np.concatenate(checked)), model_ood, np.array(labels),
            np.array(owners))


def default_model_dir() -> str:
    """The config schema's default ``model`` (models/<model_id>), found beside the package from any directory."""
    from pathlib import Path

    from pipeline.config import load_schema

    rel = load_schema("config")["properties"]["model"]["default"]
    beside = Path(__file__).resolve().parents[2] / rel
    return str(beside if beside.is_dir() else rel)


def run(args) -> None:
    from pathlib import Path

    import torch

    from pipeline import atomic
    from pipeline.he.models import load_model
    from pipeline.training.labelled_images import parse_assume_mpp, read_labels
    from pipeline.training.real_metrics import format_table, real_metrics

    torch.set_num_threads(max(1, args.threads))
    model, card = load_model(args.model or default_model_dir())
    if set(card["classes"]) != {"carcinoma", "sarcoma", "non_tumour"}:
        raise TriageError(f"{card['model_id']}: evaluate needs a carcinoma / sarcoma / non_tumour model")
    records = read_labels(args.labels, parse_assume_mpp(args.assume_mpp))
    tile_check = None
    if not args.no_tile_check:
        from pipeline.he.tile_check import default_params

        tile_check = default_params()
    probs, ood, model_ood, labels, owners = score_images(model, card, records, args.tiles_per_image, args.batch_size,
                                                         tile_check)
    sources = np.array([records[i].source for i in owners])
    metrics = real_metrics(probs, labels, sources, owners, list(card["classes"]), ood)
    metrics["ood_model_over_pct"] = round(100.0 * float((model_ood > 1.0).mean()), 2) if len(model_ood) else None
    metrics["ood_score"] = ("the workflow's: max(model, H&E tile check)" if tile_check else "the model's alone")
    trained = card.get("training_data", {})
    root = Path(__file__).resolve().parents[2]  # training runs from the repository root
    folders = {(root / f).resolve() for f in trained.get("patch_folders", [])}  # cards of models trained on folders
    seen = sorted(s for s in metrics["per_source"] if s in set(trained.get("real_sources", []))
                  or Path(args.labels).resolve().parent in folders)
    print(f"model {card['model_id']} on {args.labels}: {len(records)} images, {len(labels)} tiles at "
          f"{card['mpp']} um/px (decision support, not a diagnosis)")
    print(format_table(metrics, list(card["classes"])))
    print(f"OOD score: {metrics['ood_score']}; the model's own score over 1 on {metrics['ood_model_over_pct']} % "
          "of tiles")
    if seen:
        print(f"note: the model's training data include images of {', '.join(seen)} (its card names the sources or "
              "their folder): those rows and the pooled row are not held-out results.")
    if args.json_out:
        atomic.write_json(args.json_out, {"model_id": card["model_id"], "labels": str(args.labels),
                                          "trained_on": seen, "metrics": metrics})
