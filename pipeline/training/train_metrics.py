"""Evaluation and calibration of a tile classifier (pure numpy): AUC with bootstrap CIs, confusion matrix,
expected calibration error and temperature scaling (Guo et al., ICML 2017)."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); None without both classes."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), np.float64)
    sorted_scores = np.asarray(score)[order]
    # mid-ranks of tied runs
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(score)]
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_auc_ci(positive: np.ndarray, score: np.ndarray, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> list[float] | None:
    """Percentile CI of the AUC, resampling positives and negatives separately (stratified bootstrap)."""
    positive = np.asarray(positive, bool)
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    if len(pos) == 0 or len(neg) == 0 or n_boot <= 0:
        return None
    rng = np.random.default_rng(seed)
    score = np.asarray(score, np.float64)
    values = []
    for _ in range(n_boot):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        values.append(roc_auc(positive[idx], score[idx]))
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [round(float(lo), 4), round(float(hi), 4)]


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (np.asarray(labels, int), np.asarray(predicted, int)), 1)
    return cm


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence in equal-width bins."""
    if len(labels) == 0:
        return 0.0
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = pred == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature minimising validation NLL (golden-section search on log T; NLL is unimodal in T)."""
    if len(labels) == 0:
        return 1.0
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2))


def evaluate(probs: np.ndarray, labels: np.ndarray, classes: list[str], n_boot: int = 1000, seed: int = 0) -> dict:
    """Accuracy, balanced accuracy, one-vs-rest AUC (with bootstrap 95 % CI) per class, confusion matrix, ECE."""
    labels = np.asarray(labels, int)
    pred = probs.argmax(axis=1) if len(labels) else np.zeros(0, int)
    cm = confusion_matrix(labels, pred, len(classes))
    present = cm.sum(axis=1) > 0
    recall = np.diag(cm)[present] / cm.sum(axis=1)[present] if present.any() else np.zeros(0)
    per_class = {}
    for i, name in enumerate(classes):
        positive = labels == i
        auc = roc_auc(positive, probs[:, i]) if len(labels) else None
        per_class[name] = {
            "n": int(positive.sum()),
            "recall": round(float(cm[i, i] / cm[i].sum()), 4) if cm[i].sum() else None,
            "auc": None if auc is None else round(auc, 4),
            "auc_ci95": bootstrap_auc_ci(positive, probs[:, i], n_boot, seed) if auc is not None else None,
        }
    return {
        "n": int(len(labels)),
        "accuracy": round(float((pred == labels).mean()), 4) if len(labels) else None,
        "balanced_accuracy": round(float(recall.mean()), 4) if len(recall) else None,
        "per_class": per_class,
        "confusion": {"rows_true_cols_predicted": list(classes), "matrix": cm.tolist()},
        "ece": round(expected_calibration_error(probs, labels), 4),
    }
