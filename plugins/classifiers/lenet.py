"""``lenet``: LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling, the usual modern reading.

conv 5×5 (6) → max-pool 2 → conv 5×5 (16) → max-pool 2 → fc 120 → fc 84 → fc L. LeCun fed 28 px MNIST digits
zero-padded to 32 px; the first conv does the same padding (2 px for 28 px images, none at 32 px), so a 28 or
32 px image reaches the classifier as 16×5×5. Any channel count; larger images just give a larger first fc.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from harness.errors import ConfigError
from harness.interfaces import Classifier, Options


class LeNetOptions(Options):
    """:ivar dropout: dropout before each hidden fc layer's output (0 = the original net; >0 enables MC dropout)."""

    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    width: int = Field(default=1, ge=1, le=16, description="multiplies every layer's width (1 = the original 6-16-120-84)")


class LeNet5(nn.Module):
    def __init__(self, *, num_classes: int, channels: int, image_size: int, dropout: float = 0.0, width: int = 1):
        super().__init__()
        pad = max(0, (32 - image_size) // 2)
        side = ((image_size + 2 * pad - 4) // 2 - 4) // 2
        if side < 1:
            raise ConfigError(f"lenet needs images of at least 12 px, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6 * width, 5, padding=pad),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6 * width, 16 * width, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * width * side * side, 120 * width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(120 * width, 84 * width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(84 * width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet(Classifier):
    """LeNet-5, trained from scratch (there are no pretrained LeNet weights)."""

    Options = LeNetOptions
    options: LeNetOptions

    def __init__(self, options: Options, *, variant: str | None = None):
        super().__init__(options, variant=variant)
        self._built: dict[str, Any] = {}

    def build(self, *, num_classes: int, channels: int, image_size: int) -> nn.Module:
        o = self.options
        model = LeNet5(num_classes=num_classes, channels=channels, image_size=image_size, dropout=o.dropout,
                       width=o.width)
        self._built = {
            "image_size": image_size,
            "input_size": image_size,
            "channels": channels,
            "num_classes": num_classes,
            "conv1_padding": model.features[0].padding[0],
            "num_params": sum(p.numel() for p in model.parameters()),
        }
        return model

    def describe(self) -> dict[str, Any]:
        return {
            "architecture": "LeNet-5 (ReLU, max-pool)",
            "implementation": "plugins.classifiers.lenet",
            "dropout": self.options.dropout,
            "width": self.options.width,
            "normalization": "[-1, 1]",
            "weights": {"origin": "random-init"},
            **self._built,
        }
