"""DigitNet: a small, CPU-fast CNN for 28x28 MNIST-style digits.

Three conv blocks (32, 64, 128 channels; BatchNorm, ReLU, 2x2 max-pool) take 28x28 down to 3x3,
then dropout, a 128-d fully connected layer (the embedding :meth:`DigitNet.penultimate` returns,
used later for outlier detection) and the classifier. About 0.24 M parameters (~1 MB float32),
~8 M multiply-adds per image: far cheaper than pytorch/examples' 1.2 M-parameter net, which
spends 99% of its weights on one 9216x128 layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
EMBEDDING_DIM = 128


def _block(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    # bias=False: BatchNorm's shift makes a conv bias redundant.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class DigitNet(nn.Module):
    """Classify (N, 1, 28, 28) float images with pixels in [0, 1] (ink high) into ``num_classes``.

    The MNIST normalisation happens inside, so callers pass ``pixels / 255``. The forward pass
    returns raw logits; apply softmax for probabilities.
    """

    WIDTHS: tuple[int, int, int] = (32, 64, 128)

    def __init__(self, num_classes: int = 10, dropout: float = 0.3) -> None:
        super().__init__()
        self.num_classes = num_classes
        w1, w2, w3 = self.WIDTHS
        self.features = nn.Sequential(
            _block(1, w1, 5),  # 28 -> 14
            _block(w1, w2, 3),  # 14 -> 7
            _block(w2, w3, 3),  # 7 -> 3
        )
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(w3 * 3 * 3, EMBEDDING_DIM)
        self.fc2 = nn.Linear(EMBEDDING_DIM, num_classes)

    def penultimate(self, x: Tensor) -> Tensor:
        """Return the (N, 128) post-ReLU embedding that feeds the classifier layer."""
        x = (x - MNIST_MEAN) / MNIST_STD
        x = torch.flatten(self.features(x), 1)
        return F.relu(self.fc1(self.dropout(x)))

    def forward(self, x: Tensor) -> Tensor:
        """Return (N, num_classes) logits."""
        return self.fc2(self.dropout(self.penultimate(x)))

    def fuse_for_inference(self) -> DigitNet:
        """Fold each BatchNorm into the conv before it, in place, and return ``self``.

        Logits stay the same to float rounding; CPU inference gets ~10% faster. Only valid in eval
        mode (the fold uses the running statistics), so it raises RuntimeError in training mode.
        """
        if self.training:
            raise RuntimeError("fuse_for_inference() needs eval mode: call model.eval() first")
        for block in self.features.children():
            if not isinstance(block, nn.Sequential):
                continue
            conv, bn = block[0], block[1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                block[0] = fuse_conv_bn_eval(conv, bn)
                block[1] = nn.Identity()
        return self


class DigitNetWide(DigitNet):
    """DigitNet with 1.5x the channels (48, 96, 192; about 0.45 M parameters, ~18 M multiply-adds):
    the capacity to read photos, canvas exports, scans and outlined strokes as well as MNIST."""

    WIDTHS = (48, 96, 192)


ARCHITECTURES: dict[str, type[DigitNet]] = {"DigitNet": DigitNet, "DigitNetWide": DigitNetWide}
