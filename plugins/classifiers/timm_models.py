"""timm classifiers: the ``timm:<name>`` family and the paper's zoo entries timm implements.

- ``timm:<name>`` — any ``timm.list_models()`` name, optionally with a pretrained tag (``timm:resnet50.a1_in1k``).
- ``vgg19`` (timm ``vgg19``, torchvision's layout and weights), ``resnet50`` (``resnet50.tv_in1k``: the
  torchvision weights, as the paper used "the PyTorch library"), ``mobilenet-v3`` (``mobilenetv3_large_100``),
  ``deit-s`` (``deit_small_patch16_224``).

Models are always created with ``pretrained=False`` unless a weights file was found on disk; then timm loads
that file (``pretrained_cfg_overlay=dict(file=...)``), adapting the input conv to the channel count and
dropping the 1000-class head. timm is never asked to download.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from harness.errors import ConfigError
from plugins.classifiers._imagenet import SMALL_BELOW, ImageNetClassifier
from plugins.classifiers._weights import (
    WeightsSource,
    check_loaded,
    did_you_mean,
    find_timm_weights,
    local_file,
    weights_mismatch,
)

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


class TimmClassifier(ImageNetClassifier):
    """``timm:<name>``: any timm model, built with ``num_classes`` and ``in_chans``.

    ``small_input: adapt`` (the default without ``pretrained``) feeds images at their own size; models with a
    fixed input size (ViTs) are built for it (``img_size``). ``resize`` upsamples to the model's native size
    (its pretrained config's ``input_size``) or ``resize_to``.
    """

    #: A fixed timm name (zoo entries); ``None``: the family variant names it.
    timm_name: ClassVar[str | None] = None
    #: File names under ``$TORCH_HOME/hub/checkpoints`` that hold this model's weights (torchvision downloads).
    torch_hub_files: ClassVar[tuple[str, ...]] = ()
    #: Whether to check with a 2-image forward that the network accepts the input size (generic models).
    probe: ClassVar[bool] = True

    def __init__(self, options, *, variant: str | None = None):
        super().__init__(options, variant=variant)
        import timm
        from timm.models import get_pretrained_cfg, split_model_name_tag

        name = self.timm_name or variant
        if not name:
            raise ConfigError("the timm family needs a model name, e.g. timm:resnet18 (see timm.list_models()).")
        arch, tag = split_model_name_tag(name)
        if not timm.is_model(arch):
            raise did_you_mean(arch, timm.list_models(), "timm model")
        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError:
            tags = ", ".join(timm.list_pretrained(f"{arch}.*")) or "none"
            raise ConfigError(f"timm model {arch!r} has no pretrained tag {tag!r}; tags: {tags}.") from None
        self.name = name
        self.pretrained_cfg: dict[str, Any] = cfg.to_dict() if cfg is not None else {}
        if self.timm_name is None:
            self.architecture = f"timm {name}"
            size = self.pretrained_cfg.get("input_size")
            if size:
                self.native_size = int(size[-1])
            if self.pretrained_cfg.get("mean"):
                self.pretrained_mean = tuple(self.pretrained_cfg["mean"])
                self.pretrained_std = tuple(self.pretrained_cfg["std"])

    @classmethod
    def preflight(cls, options, *, variant: str | None = None) -> None:
        """The timm model (and pretrained tag) exists — ``timm.is_model``, as the constructor checks — and, with
        ``pretrained``, its weights are on disk. Builds no network."""
        plugin = cls(options, variant=variant)
        if plugin.options.pretrained:
            plugin.find_weights()

    def implementation(self) -> str:
        import timm

        return f"timm {timm.__version__}: {self.name}"

    def find_weights(self) -> WeightsSource:
        if self.options.weights:
            return local_file(self.options.weights)
        return find_timm_weights(self.name, extra_torch_hub_files=self.torch_hub_files)

    # ------------------------------------------------------------------ per-model adaptation (overridden)

    def adapt_kwargs(self, size: int, small: bool) -> dict[str, Any]:
        """Extra ``timm.create_model`` arguments for ``adapt``. Generic: fixed-size models get ``img_size``."""
        if self.pretrained_cfg.get("fixed_input_size") and size != self.native_size:
            return {"img_size": size}
        return {}

    def adapt_module(self, model: nn.Module, *, channels: int, small: bool, pretrained: bool) -> list[str]:
        """Change the built network for small images; return what was changed."""
        return []

    # ------------------------------------------------------------------ build

    def create(
        self, *, num_classes: int, channels: int, size: int, small: bool, source: WeightsSource | None
    ) -> tuple[nn.Module, list[str]]:
        import timm

        kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": channels}
        if self.drop_rate is not None:
            kwargs["drop_rate"] = self.drop_rate
        changes: list[str] = []
        if self.mode == "adapt":
            extra = self.adapt_kwargs(size, small)
            kwargs.update(extra)
            changes += [f"timm {k}={v}" for k, v in extra.items()]
        if source is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(source.path)})
        try:
            model = timm.create_model(self.name, **kwargs)
        except TypeError as exc:
            if "img_size" in kwargs and "img_size" in str(exc):
                raise ConfigError(
                    f"timm model {self.name!r} cannot be built for {size} px images; use small_input: resize."
                ) from exc
            raise
        except (RuntimeError, KeyError, ValueError) as exc:
            if source is None:
                raise
            raise weights_mismatch(source.path, self.name, exc) from exc
        if source is not None:
            self.loaded_fraction = check_loaded(model, source, self.name)
        if self.mode == "adapt":
            changes += self.adapt_module(model, channels=channels, small=small, pretrained=source is not None)
        if self.probe:
            self._probe(model, channels, size)
        return model, changes

    def _probe(self, model: nn.Module, channels: int, size: int) -> None:
        import torch

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros(1, channels, size, size))
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise ConfigError(
                f"timm model {self.name!r} does not take {size} px inputs ({' '.join(str(exc).split())[:160]}); "
                f"use small_input: resize."
            ) from exc
        finally:
            model.train(was_training)


# ----------------------------------------------------------------------------------------------- the zoo


def _conv_init(conv: nn.Module) -> None:
    from torch import nn

    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as timm and torchvision do
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class VGG19(TimmClassifier):
    """VGG-19 (timm ``vgg19``: torchvision's network, its FC head written as convolutions).

    adapt: the conv stack runs at the image's own size (32 px → a 1×1×512 map after five 2× pools; 28 px
    images are resized to 32). The head's first layer, a 7×7 conv over the ImageNet 7×7 map, would only see a
    replicated 1×1 map, so it becomes the equivalent 1×1 conv (its kernel summed over space): the same function
    with 100M fewer parameters, and the same initial distribution (kaiming fan-out).
    """

    timm_name = "vgg19.tv_in1k"
    architecture = "VGG-19"
    default_drop_rate = 0.5  # torchvision's classifier dropout
    torch_hub_files = ("vgg19-dcbb9e9d.pth",)  # torchvision's file; timm's filter maps its layout
    probe = False

    def adapted_input_size(self, image_size: int) -> int:
        return max(image_size, 32)

    def adapt_module(self, model, *, channels, small, pretrained):
        import torch
        from torch import nn

        mlp = model.pre_logits
        if not small or mlp.input_kernel_size == 1:
            return []
        old = mlp.fc1
        new = nn.Conv2d(old.in_channels, old.out_channels, 1, bias=True)
        with torch.no_grad():
            new.weight.copy_(old.weight.sum(dim=(2, 3), keepdim=True))
            new.bias.copy_(old.bias)
        mlp.fc1 = new
        mlp.input_kernel_size = 1
        return ["head fc1: 7×7 conv → equivalent 1×1 conv (kernel summed; the feature map is 1×1)"]


class ResNet50(TimmClassifier):
    """ResNet-50 (timm ``resnet50.tv_in1k``: torchvision's network and weights).

    adapt: the CIFAR stem — ``conv1`` 3×3 stride 1 and no max-pool — so a 32 px image reaches the last stage at
    4×4 instead of 1×1 (the stem's 4× downsampling removed). With ``pretrained`` the new stem is random.
    """

    timm_name = "resnet50.tv_in1k"
    architecture = "ResNet-50"
    default_drop_rate = 0.0
    probe = False

    def adapt_module(self, model, *, channels, small, pretrained):
        from torch import nn

        if not small:
            return []
        model.conv1 = nn.Conv2d(channels, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        _conv_init(model.conv1)
        model.maxpool = nn.Identity()
        note = " (re-initialised; the pretrained 7×7 stem does not fit)" if pretrained else ""
        return [f"conv1: 7×7 stride 2 → 3×3 stride 1{note}", "stem max-pool removed"]


class MobileNetV3(TimmClassifier):
    """MobileNet-V3 Large (timm ``mobilenetv3_large_100``; torchvision's differs only in weight layout).

    adapt: stride 1 in the stem conv and in the first stride-2 block (weights keep their shapes), removing 4×
    of early downsampling as for ResNet-50: 32 px → 4×4 at the last stage instead of 1×1.
    """

    timm_name = "mobilenetv3_large_100.ra_in1k"
    architecture = "MobileNet-V3 Large"
    default_drop_rate = 0.2  # torchvision's mobilenet_v3_large classifier dropout
    probe = False

    def adapt_module(self, model, *, channels, small, pretrained):
        if not small:
            return []
        model.conv_stem.stride = (1, 1)
        first = next(b for stage in model.blocks for b in stage if getattr(b, "conv_dw", None) is not None
                     and b.conv_dw.stride == (2, 2))
        first.conv_dw.stride = (1, 1)
        return ["conv_stem: stride 2 → 1", "first stride-2 block: stride 2 → 1"]


class DeiTSmall(TimmClassifier):
    """DeiT-S (timm ``deit_small_patch16_224``).

    adapt: built for the image size with 4-px patches below 64 px (32 px → 8×8 = 64 tokens, the usual CIFAR
    ViT setting) and 16-px patches above; sizes round up to a multiple of the patch. With ``pretrained`` timm
    resamples the patch embedding and position embeddings to fit.
    """

    timm_name = "deit_small_patch16_224.fb_in1k"
    architecture = "DeiT-S"
    default_drop_rate = 0.0
    probe = False

    @staticmethod
    def _patch(image_size: int) -> int:
        return 4 if image_size < SMALL_BELOW else 16

    def adapted_input_size(self, image_size: int) -> int:
        p = self._patch(image_size)
        return -(-image_size // p) * p

    def adapt_kwargs(self, size, small):
        if size == self.native_size and not small:
            return {}
        return {"img_size": size, "patch_size": 4 if small else 16}
