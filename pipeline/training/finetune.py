"""Partial fine-tuning of the pretrained backbone: the last kept MBConv block of EfficientNet-Lite0 and a linear
head trained on the (frozen) activations that enter it, for leave-one-source-out comparison with frozen heads.

Public: :func:`block_inputs` (tiles -> activations entering block ``k``), :func:`finetune_block` (fit block ``k``
+ head on them), :func:`loso_finetune` (out-of-fold logits).

The blocks before ``k`` stay frozen, so their activations are computed once per tile (with the tile's colour
jitter baked in); only block ``k`` (ImageNet initialisation) and the head learn, with class- and source-balanced
sampling, AdamW and a fixed number of steps.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.training.train_data import balanced_weights


@torch.no_grad()
def block_inputs(net, tiles: np.ndarray, k: int, *, augment: bool, grey: bool, seed: int = 0,
                 batch_size: int = 64) -> np.ndarray:
    """(N, C, H, W) float16 activations entering block ``k`` of the ImageNet ``net`` for uint8 RGB tiles."""
    from pipeline.training.tile_features import imagenet_batch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for a in range(0, len(tiles), batch_size):
        x = imagenet_batch(tiles[a:a + batch_size], gen, augment=augment, grey=grey)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = F.relu6(net._bn0(net._conv_stem(x)))
            for block in net._blocks[:k]:
                h = block(h)
        out.append(h.float().numpy().astype(np.float16))
    return np.concatenate(out)


class BlockHead(nn.Module):
    def __init__(self, block: nn.Module, dim: int, n_classes: int):
        super().__init__()
        self.block, self.fc = block, nn.Linear(dim, n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(h).mean(dim=(2, 3)))


def finetune_block(block: nn.Module, acts: np.ndarray, labels: np.ndarray, weights: np.ndarray, n_classes: int,
                   steps: int = 300, batch: int = 64, lr: float = 1e-3, seed: int = 0) -> BlockHead:
    """Block (a copy, ImageNet start) + linear head trained on ``acts``; batch norms kept in eval mode (their
    ImageNet statistics), so small batches of one source cannot shift them."""
    torch.manual_seed(seed)
    model = BlockHead(copy.deepcopy(block), block._project_conv.out_channels, n_classes)
    opt = torch.optim.AdamW([{"params": model.block.parameters(), "lr": lr * 0.3},
                             {"params": model.fc.parameters(), "lr": lr}], weight_decay=1e-2)
    rng = np.random.default_rng(seed)
    p = weights / weights.sum()
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    for _ in range(steps):
        idx = rng.choice(len(labels), batch, p=p)
        h = torch.from_numpy(acts[idx].astype(np.float32))
        loss = F.cross_entropy(model(h), torch.from_numpy(labels[idx]).long(), label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def _logits(model: BlockHead, acts: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([model(torch.from_numpy(acts[a:a + batch].astype(np.float32))).numpy()
                           for a in range(0, len(acts), batch)])


def loso_finetune(net, k: int, train_acts: np.ndarray, train_labels: np.ndarray, val_acts: np.ndarray,
                  folds_train: np.ndarray, folds_val: np.ndarray, n_classes: int, **kw) -> np.ndarray:
    """Out-of-fold logits: each fold's tiles scored by block ``k`` + head fine-tuned without that fold."""
    logits = np.zeros((len(folds_val), n_classes), np.float32)
    for fold in np.unique(folds_val):
        keep = folds_train != fold
        w = balanced_weights(train_labels[keep], folds_train[keep], n_classes)
        model = finetune_block(net._blocks[k], train_acts[keep], train_labels[keep], w, n_classes, **kw)
        sel = folds_val == fold
        logits[sel] = _logits(model, val_acts[sel])
    return logits
