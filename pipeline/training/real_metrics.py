"""Metrics of a tile classifier on labelled real tiles, per source and pooled: the one definition used by the
``evaluate`` verb and by the model card. Pure numpy.

Public: :func:`real_metrics`, :func:`format_table`.

Per group (each source, and all pooled): tiles, images, one-vs-rest AUC per class with a bootstrap 95 % CI,
macro-AUC (mean over the classes that have both positives and negatives), tumour-vs-non-tumour AUC
(score 1 - P(non_tumour)), accuracy, confusion matrix, and the share of tiles whose OOD score exceeds 1.
An AUC is None where the group lacks positives or negatives (a single-class source): its accuracy still counts.
"""

from __future__ import annotations

import numpy as np

from pipeline.training.train_metrics import bootstrap_auc_ci, confusion_matrix, roc_auc


def _group(probs: np.ndarray, labels: np.ndarray, ood: np.ndarray | None, owners: np.ndarray,
           classes: list[str], n_boot: int) -> dict:
    per_class = {}
    aucs = []
    for i, name in enumerate(classes):
        pos = labels == i
        auc = roc_auc(pos, probs[:, i])
        per_class[name] = {"n": int(pos.sum()), "auc": None if auc is None else round(auc, 4),
                           "auc_ci95": bootstrap_auc_ci(pos, probs[:, i], n_boot) if auc is not None else None,
                           "recall": round(float((probs[pos].argmax(1) == i).mean()), 4) if pos.any() else None}
        if auc is not None:
            aucs.append(auc)
    nt = classes.index("non_tumour")
    tumour = labels != nt
    tvn = roc_auc(tumour, 1.0 - probs[:, nt])
    pred = probs.argmax(1)
    return {
        "tiles": int(len(labels)),
        "images": int(len(np.unique(owners))),
        "macro_auc": round(float(np.mean(aucs)), 4) if aucs else None,
        "tumour_vs_non_tumour_auc": None if tvn is None else round(tvn, 4),
        "tumour_vs_non_tumour_auc_ci95": bootstrap_auc_ci(tumour, 1.0 - probs[:, nt], n_boot) if tvn is not None
        else None,
        "accuracy": round(float((pred == labels).mean()), 4),
        "per_class": per_class,
        "confusion": {"rows_true_cols_predicted": list(classes),
                      "matrix": confusion_matrix(labels, pred, len(classes)).tolist()},
        "ood_over_threshold": None if ood is None else round(float((ood > 1.0).mean()), 4),
    }


def real_metrics(probs: np.ndarray, labels: np.ndarray, sources: np.ndarray, owners: np.ndarray,
                 classes: list[str], ood: np.ndarray | None = None, n_boot: int = 500) -> dict:
    """``{"pooled": {...}, "per_source": {source: {...}}}`` for tiles with true class index ``labels``."""
    labels, sources, owners = np.asarray(labels), np.asarray(sources), np.asarray(owners)
    out = {"pooled": _group(probs, labels, ood, owners, classes, n_boot), "per_source": {}}
    for s in sorted(np.unique(sources)):
        sel = sources == s
        out["per_source"][str(s)] = _group(probs[sel], labels[sel], None if ood is None else ood[sel], owners[sel],
                                           classes, n_boot)
    return out


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def format_table(metrics: dict, classes: list[str]) -> str:
    """A plain-text table: one row per source, then the pooled row."""
    head = ["source", "images", "tiles", *[f"AUC {c}" for c in classes], "macro-AUC", "tumour-AUC", "accuracy",
            "OOD>1"]
    rows = []
    for name, g in [*metrics["per_source"].items(), ("ALL (pooled)", metrics["pooled"])]:
        rows.append([name, g["images"], g["tiles"], *[g["per_class"][c]["auc"] for c in classes], g["macro_auc"],
                     g["tumour_vs_non_tumour_auc"], g["accuracy"], g["ood_over_threshold"]])
    cells = [head] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                   strict=True)))
                     for r in cells)
