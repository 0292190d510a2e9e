"""Classification heads on frozen backbone features, their out-of-distribution statistics, and leave-one-source-out
(LOSO) validation. Pure numpy/torch on arrays: features in, heads and predictions out.

Public: :func:`balanced_weights`, :func:`fit_head`, :func:`head_logits`, :func:`fit_ood`, :func:`ood_distance`,
:func:`loso_predictions`.

Heads are a linear layer or a one-hidden-layer MLP trained full-batch (AdamW, weight decay) on standardised
features; the standardisation is folded into the first layer afterwards so the head takes raw features, as
``TileClassifier`` gives them. Sample weights give every class the same total weight and, within a class, each
source a share proportional to the square root of its size: a large source cannot drown a small one, and no
class wins by count.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.training.train_data import balanced_weights

__all__ = ["balanced_weights", "fit_head", "head_logits", "fit_ood", "ood_distance", "loso_predictions"]


def _make_head(kind: str, dim: int, n_classes: int, hidden: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(dim, n_classes)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(0.2),
                             nn.Linear(hidden, n_classes))
    raise ValueError(f"unknown head kind {kind!r}; use linear or mlp")


def fit_head(feats: np.ndarray, labels: np.ndarray, weights: np.ndarray, n_classes: int, kind: str = "linear",
             hidden: int = 256, weight_decay: float = 1e-2, steps: int = 400, lr: float = 3e-3,
             seed: int = 0) -> nn.Module:
    """A head (eval mode) fitted on raw features; input standardisation folded into its first layer."""
    torch.manual_seed(seed)
    x = torch.from_numpy(feats).float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-3)
    xs = (x - mean) / std
    y = torch.from_numpy(labels).long()
    w = torch.from_numpy(weights).float()
    head = _make_head(kind, x.shape[1], n_classes, hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        inp = xs
        if kind == "mlp":  # feature noise: a cheap regulariser for a small, correlated training set
            inp = xs + 0.1 * torch.randn(xs.shape, generator=gen)
        loss = (nn.functional.cross_entropy(head(inp), y, reduction="none", label_smoothing=0.05) * w).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    first = head if isinstance(head, nn.Linear) else head[0]
    with torch.no_grad():  # W (x - m) / s + b = (W / s) x + (b - W m / s)
        first.bias -= first.weight @ (mean / std)
        first.weight /= std
    return head


@torch.no_grad()
def head_logits(head: nn.Module, feats: np.ndarray) -> np.ndarray:
    return head(torch.from_numpy(feats).float()).numpy()


def fit_ood(feats: np.ndarray, labels: np.ndarray, n_classes: int, shrinkage: float = 0.1
            ) -> tuple[np.ndarray, np.ndarray]:
    """(class means (C, D), shared precision (D, D)): Mahalanobis statistics (Lee et al., 2018) with the
    within-class covariance shrunk towards its mean variance (Ledoit-Wolf style, fixed ``shrinkage``)."""
    d = feats.shape[1]
    means = np.zeros((n_classes, d))
    centred = []
    for c in range(n_classes):
        fc = feats[labels == c]
        if len(fc):
            means[c] = fc.mean(0)
            centred.append(fc - means[c])
    z = np.concatenate(centred)
    cov = z.T @ z / max(1, len(z) - 1)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d)
    return means.astype(np.float32), np.linalg.inv(cov).astype(np.float32)


def ood_distance(feats: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distance to the nearest class mean (N,)."""
    best = np.full(len(feats), np.inf)
    for m in means:
        diff = feats - m
        best = np.minimum(best, np.einsum("nd,de,ne->n", diff, precision, diff))
    return np.sqrt(np.clip(best, 0, None))


def loso_predictions(train: dict, val: dict, folds_train: np.ndarray, folds_val: np.ndarray, n_classes: int,
                     kind: str, **fit_kw) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold (logits (Nv, C), OOD distance (Nv,)) for every validation tile: the head and OOD statistics
    used for a tile were fitted without any tile of its fold (source)."""
    logits = np.zeros((len(folds_val), n_classes), np.float32)
    dist = np.zeros(len(folds_val), np.float32)
    for fold in np.unique(folds_val):
        keep = folds_train != fold
        f, y = train["features"][keep], train["labels"][keep]
        w = balanced_weights(y, folds_train[keep], n_classes)
        head = fit_head(f, y, w, n_classes, kind, **fit_kw)
        sel = folds_val == fold
        logits[sel] = head_logits(head, val["features"][sel])
        means, prec = fit_ood(f, y, n_classes)
        dist[sel] = ood_distance(val["features"][sel], means, prec)
    return logits, dist
