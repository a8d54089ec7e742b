"""torchvision classifiers: ``alexnet`` (timm has no AlexNet).

Pretrained weights come from the ``weights`` file or from the torch hub cache, where torchvision keeps its
downloads (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``); torchvision is never asked to download.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.errors import WeightsError
from plugins.classifiers._imagenet import ImageNetClassifier
from plugins.classifiers._weights import (
    WeightsSource,
    find_in_torch_hub,
    load_state_dict_file,
    local_file,
    torch_hub_checkpoints,
    url_filename,
    weights_mismatch,
)

if TYPE_CHECKING:  # pragma: no cover
    pass

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"  # AlexNet_Weights.IMAGENET1K_V1


class AlexNet(ImageNetClassifier):
    """AlexNet (torchvision ``alexnet``, the one-weird-trick variant torchvision ships).

    adapt: the first conv becomes 3×3 stride 1 (was 11×11 stride 4): the stem's 4× downsampling removed, as
    for ResNet-50, so a 32 px image leaves the conv stack at 3×3 (torchvision's 11×11/4 stem cannot take 32 px:
    its third max-pool would get a 1×1 map). The rest, including the 6×6 adaptive pool and the 9216→4096→4096
    head, is torchvision's. With ``pretrained`` the new first conv is random.
    """

    architecture = "AlexNet"
    default_drop_rate = 0.5  # torchvision's

    def implementation(self) -> str:
        import torchvision

        return f"torchvision {torchvision.__version__}: alexnet"

    def find_weights(self) -> WeightsSource:
        if self.options.weights:
            return local_file(self.options.weights)
        hit = find_in_torch_hub([url_filename(ALEXNET_URL)])
        if hit is None:
            raise WeightsError(
                f"pretrained AlexNet weights are not on disk and nothing is downloaded at run time: put "
                f"{ALEXNET_URL} into {torch_hub_checkpoints()}, or pass the file with the classifier's `weights` option."
            )
        return WeightsSource(hit, "torch-hub-cache")

    def create(self, *, num_classes, channels, size, small, source):
        import torch
        import torchvision
        from timm.models import adapt_input_conv
        from torch import nn

        model = torchvision.models.alexnet(weights=None, num_classes=num_classes, dropout=self.drop_rate)
        changes: list[str] = []
        first = model.features[0]
        if channels != first.in_channels:
            model.features[0] = nn.Conv2d(
                channels, first.out_channels, first.kernel_size, first.stride, first.padding
            )
        if source is not None:
            sd = load_state_dict_file(source.path)
            head = ("classifier.6.weight", "classifier.6.bias")
            if tuple(sd.get(head[0], torch.empty(0)).shape) != tuple(model.classifier[6].weight.shape):
                sd = {k: v for k, v in sd.items() if k not in head}
            if "features.0.weight" in sd and sd["features.0.weight"].shape[1] != channels:
                sd["features.0.weight"] = adapt_input_conv(channels, sd["features.0.weight"])
            try:
                result = model.load_state_dict(sd, strict=False)
            except RuntimeError as exc:
                raise weights_mismatch(source.path, "alexnet", exc) from exc
            total = sum(p.numel() for p in model.parameters())
            params = dict(model.named_parameters())
            self.loaded_fraction = sum(params[k].numel() for k in sd if k in params) / total
            missing = sorted(set(result.missing_keys) - set(head))
            if missing or result.unexpected_keys:
                raise weights_mismatch(
                    source.path, "alexnet",
                    RuntimeError(f"missing {missing[:4]}, unexpected {sorted(result.unexpected_keys)[:4]}"),
                )
        if small:
            # PyTorch's default init, as torchvision's AlexNet uses for every layer
            model.features[0] = nn.Conv2d(channels, model.features[0].out_channels, 3, stride=1, padding=1)
            note = " (re-initialised; the pretrained 11×11 filters do not fit)" if source is not None else ""
            changes.append(f"features.0: 11×11 stride 4 → 3×3 stride 1{note}")
        return model, changes
