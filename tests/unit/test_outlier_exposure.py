"""Outlier exposure in training (training_worker.trainer.train): non-digits in each batch are
pushed towards a uniform softmax, which is what lets the detector tell them from digits."""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import softmax

from digitnet.net import DigitNet
from training_worker.populations import upload_digits
from training_worker.trainer import evaluate, to_tensor, train


def _fit(outliers: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor) -> DigitNet:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = DigitNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    for _ in range(6):
        train(net, x, y, opt, sched, gen, 64, 0.0, None, None, outliers, 0.5)
    return net.eval()


def _max_prob(net: DigitNet, x: torch.Tensor) -> float:
    with torch.inference_mode():
        return float(softmax(net(x).numpy(), axis=1).max(axis=1).mean())


def test_outlier_exposure_flattens_non_digit_softmax_and_keeps_digits() -> None:
    torch.set_num_threads(1)
    images, labels, nondigits = upload_digits()
    order = np.random.default_rng(0).permutation(len(labels))  # the file is sorted by class
    images, labels = images[order], labels[order]
    x, y = to_tensor(images[:1024]), torch.from_numpy(labels[:1024])
    x_out = to_tensor(nondigits[np.random.default_rng(1).permutation(len(nondigits))[:256]])
    seen, unseen = x_out[:192], x_out[192:]  # trained on the first 192, judged on the rest
    plain, exposed = _fit(None, x, y), _fit(seen, x, y)
    held_x, held_y = to_tensor(images[-512:]), torch.from_numpy(labels[-512:])
    # Non-digits it never saw get a flatter softmax than without exposure ...
    assert _max_prob(exposed, unseen) < _max_prob(plain, unseen) - 0.1
    # ... well below what digits get, and it reads digits as well as without (96 steps of
    # training: both are far from converged, the comparison is what counts).
    assert _max_prob(exposed, held_x) > _max_prob(exposed, unseen) + 0.15
    assert evaluate(exposed, held_x, held_y)[0] >= evaluate(plain, held_x, held_y)[0] - 0.05
