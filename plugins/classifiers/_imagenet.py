"""Shared options and input handling of the ImageNet-architecture classifiers (timm and torchvision).

ImageNet networks expect about 224 px; the benchmark's datasets are 28–32 px. ``small_input`` says what to do:

- ``"resize"``: the harness upsamples every batch to ``resize_to`` (default: the model's native size, 224) and
  the architecture is untouched — what a pretrained model needs.
- ``"adapt"``: the image keeps its size and the architecture adapts to it (each model says how, e.g. a 3×3
  stride-1 stem without max-pool for ResNet-50, 4-px patches for DeiT-S) — the usual CIFAR practice, and much
  cheaper than 224 px when training from scratch.
- ``"auto"`` (default): ``"resize"`` when ``pretrained``, ``"adapt"`` otherwise.

What was done is returned by :meth:`ImageNetClassifier.describe` and so recorded in the results.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from harness.interfaces import Classifier, Options
from plugins.classifiers._weights import WeightsSource, check_weights_option, fit_channels

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

#: Images smaller than this (in px) are "small": ``adapt`` changes the architecture only for them.
SMALL_BELOW = 64


class NetOptions(Options):
    """Options of every ImageNet-architecture classifier.

    :ivar pretrained: start from ImageNet weights found on disk (see ``docs/classifiers.md``); never downloads.
    :ivar weights: a local weights file (implies the file is what ``pretrained`` loads); needs ``pretrained``.
    :ivar small_input: ``auto`` | ``resize`` | ``adapt`` — how 28–32 px images meet an ImageNet architecture.
    :ivar resize_to: the side ``resize`` upsamples to; default the model's native input size.
    :ivar drop_rate: classifier dropout; default the reference implementation's (recorded).
    """

    pretrained: bool = False
    weights: str | None = None
    small_input: Literal["auto", "resize", "adapt"] = "auto"
    resize_to: int | None = Field(default=None, ge=8, le=1024)
    drop_rate: float | None = Field(default=None, ge=0.0, lt=1.0)

    _check_weights = field_validator("weights")(check_weights_option)

    @model_validator(mode="after")
    def _weights_need_pretrained(self) -> NetOptions:
        if self.weights is not None and not self.pretrained:
            raise ValueError("`weights` is set but `pretrained` is false; set pretrained: true to load the file")
        return self


class ImageNetClassifier(Classifier):
    """Base of the ImageNet architectures: resolves ``small_input``, normalisation, weights and the record."""

    Options: ClassVar[type[Options]] = NetOptions
    options: NetOptions

    #: Shown in results.
    architecture: ClassVar[str] = "?"
    #: The reference implementation's classifier dropout (``None``: leave the library default).
    default_drop_rate: ClassVar[float | None] = None
    #: The reference input side.
    native_size: ClassVar[int] = 224
    #: The normalisation of the pretrained weights (RGB).
    pretrained_mean: ClassVar[tuple[float, ...]] = (0.485, 0.456, 0.406)
    pretrained_std: ClassVar[tuple[float, ...]] = (0.229, 0.224, 0.225)

    def __init__(self, options: Options, *, variant: str | None = None):
        super().__init__(options, variant=variant)
        self._built: dict[str, Any] = {}
        #: Set by :meth:`create` when weights were loaded: the fraction of parameters taken from the file.
        self.loaded_fraction: float | None = None

    # ------------------------------------------------------------------ choices

    @property
    def mode(self) -> Literal["resize", "adapt"]:
        """``small_input`` with ``auto`` resolved."""
        if self.options.small_input == "auto":
            return "resize" if self.options.pretrained else "adapt"
        return self.options.small_input

    @property
    def drop_rate(self) -> float | None:
        return self.options.drop_rate if self.options.drop_rate is not None else self.default_drop_rate

    def input_size(self, image_size: int) -> int:
        if self.mode == "resize":
            return max(image_size, self.options.resize_to or self.native_size)
        return self.adapted_input_size(image_size)

    def adapted_input_size(self, image_size: int) -> int:
        """The side the adapted network sees (a model may need a minimum or a multiple)."""
        return image_size

    def normalization(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.options.pretrained:
            return fit_channels(self.pretrained_mean, channels), fit_channels(self.pretrained_std, channels)
        return super().normalization(channels)

    # ------------------------------------------------------------------ build

    def build(self, *, num_classes: int, channels: int, image_size: int) -> nn.Module:
        size = self.input_size(image_size)
        small = self.mode == "adapt" and image_size < SMALL_BELOW
        source = self.find_weights() if self.options.pretrained else None
        self.loaded_fraction = None
        model, changes = self.create(
            num_classes=num_classes, channels=channels, size=size, small=small, source=source
        )
        if size != image_size:
            changes = [f"input resized {image_size}→{size} px by the harness", *changes]
        self._built = {
            "image_size": image_size,
            "input_size": size,
            "channels": channels,
            "num_classes": num_classes,
            "input_handling": changes or ["none: the architecture takes the images as they are"],
            "weights": (
                {**source.describe(), "loaded_fraction": self.loaded_fraction} if source else {"origin": "random-init"}
            ),
            "num_params": sum(p.numel() for p in model.parameters()),
        }
        return model

    @abstractmethod
    def find_weights(self) -> WeightsSource:
        """The pretrained weights on disk (``weights`` option first), else :class:`WeightsError`."""

    @abstractmethod
    def create(
        self, *, num_classes: int, channels: int, size: int, small: bool, source: WeightsSource | None
    ) -> tuple[nn.Module, list[str]]:
        """Build the network (loading ``source`` if given); return it and what was changed for the input."""

    # ------------------------------------------------------------------ record

    def implementation(self) -> str:
        return "?"

    def describe(self) -> dict[str, Any]:
        """Architecture, implementation, resolved input handling and weights source (complete after build)."""
        mean, std = self.normalization(3)
        return {
            "architecture": self.architecture,
            "implementation": self.implementation(),
            "small_input": self.mode,
            "small_input_option": self.options.small_input,
            "pretrained": self.options.pretrained,
            "drop_rate": self.drop_rate,
            "normalization": "imagenet" if self.options.pretrained else "[-1, 1]",
            "mean_std_rgb": [list(mean), list(std)],
            **self._built,
        }
