"""A small, fast CNN classifier: the evaluator network behind FID / KID / IS / PR / DC.

conv 3x3 (32) -> max-pool -> conv 3x3 (64) -> max-pool -> conv 3x3 (128) -> fc 256 -> K classes,
each conv and the fc followed by batch norm and ReLU, dropout before both fc layers.
Fashion-MNIST at 28x28: 1.7 M parameters. Pooling after the first two convs (rather than after
the second and third) gives the same parameters at a third of the cost: about 550 training
images/s on one busy CPU thread, so an epoch of Fashion-MNIST takes one to two minutes.

Why a small CNN and not Inception: no Inception weights can be downloaded on these machines,
and an ImageNet network looks at 28x28 greyscale digits through a 299x299 colour lens. What the
metrics need is an embedding that knows the dataset's classes; the 256 penultimate features
(after batch norm and ReLU, before dropout) are that embedding, and the softmax is p(y|x) for
the Inception Score and the class histogram.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from capsgen.models.classifier.config import ClassifierConfig


class Classifier(nn.Module):
    """Input [B, C, H, W] in [0, 1] -> logits [B, K]; ``features`` gives the [B, hidden] layer."""

    def __init__(self, cfg: ClassifierConfig, shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        C, H, W = shape
        if not cfg.channels:
            raise ValueError("classifier needs at least one conv layer (model.channels)")
        bad = [i for i in cfg.pool_after if not 0 <= i < len(cfg.channels)]
        if bad:
            raise ValueError(f"pool_after {cfg.pool_after} names convs outside 0..{len(cfg.channels) - 1}")
        if cfg.hidden < 1 or not 0.0 <= cfg.dropout < 1.0:
            raise ValueError(f"need hidden >= 1 and 0 <= dropout < 1, got {cfg.hidden} and {cfg.dropout}")
        layers: list[nn.Module] = []
        c, h, w = C, H, W
        for i, width in enumerate(cfg.channels):
            # bias is redundant before batch norm
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            c = width
            if i in cfg.pool_after:
                if h < 2 or w < 2:
                    raise ValueError(f"input {H}x{W} is too small for {len(cfg.pool_after)} poolings")
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.conv = nn.Sequential(*layers)
        self.shape, self.num_classes = tuple(shape), num_classes
        self.fc = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(c * h * w, cfg.hidden, bias=False),
                                nn.BatchNorm1d(cfg.hidden), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, hidden] (after batch norm + ReLU, before the last dropout)."""
        return self.fc(self.conv(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features_and_probs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return f, F.softmax(self.head(f), dim=1)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities p(y|x) [B, K]."""
        return F.softmax(self(x), dim=1)
