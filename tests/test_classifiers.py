"""Classifier plugins: every registry entry builds, runs and trains one step; pretrained weights come only from disk."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError

from harness.errors import ConfigError, WeightsError
from harness.plugin.manager import create_plugin_manager

#: The family entry is exercised with a tiny timm model.
FAMILY_EXAMPLE = {"timm:": "timm:test_resnet"}


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machines are shared 2-core boxes: two OpenMP threads competing with other work are far slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _empty_weight_caches(tmp_path_factory, monkeypatch):
    """Point the Hugging Face and torch hub caches at empty folders, so no test sees a developer's downloads."""
    import huggingface_hub.constants

    root = tmp_path_factory.mktemp("caches")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root / "hf"))
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(root / "torch"))
    yield root
    torch.hub.set_dir(before)


def registry():
    return create_plugin_manager().registry("classifiers")


def make(name: str, **options):
    cls, variant = registry().get(name)
    return cls(cls.Options(**options), variant=variant)


def entry_names() -> list[str]:
    return [FAMILY_EXAMPLE.get(n, n) for n in registry().names()]


def test_registry_has_the_zoo():
    names = set(registry().names())
    assert {"lenet", "timm:", "alexnet", "vgg19", "resnet50", "mobilenet-v3", "deit-s"} <= names


def train_step(model: torch.nn.Module, size: int, channels: int, num_classes: int, batch: int = 2) -> torch.Tensor:
    model = model.to(memory_format=torch.channels_last)  # the harness does this; every module must accept it
    model.train()
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.arange(batch) % num_classes
    logits = model(x)
    assert logits.shape == (batch, num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    torch.nn.functional.cross_entropy(logits, y).backward()
    opt.step()
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert changed > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return logits


@pytest.mark.parametrize("channels,image_size", [(3, 32), (1, 28)], ids=["32px-rgb", "28px-grey"])
@pytest.mark.parametrize("name", entry_names())
def test_every_entry_builds_and_trains(name, channels, image_size):
    torch.manual_seed(0)
    clf = make(name)
    model = clf.build(num_classes=10, channels=channels, image_size=image_size)
    size = clf.input_size(image_size)
    assert size >= image_size
    mean, std = clf.normalization(channels)
    assert len(mean) == len(std) == channels
    train_step(model, size, channels, 10)
    record = clf.describe()
    json.dumps(record)  # recorded in the results
    assert record["architecture"] and record["input_size"] == size and record["num_params"] > 0
    assert record["weights"] == {"origin": "random-init"}


def test_lenet_shapes_and_dropout():
    clf = make("lenet", dropout=0.5)
    m28 = clf.build(num_classes=10, channels=1, image_size=28)
    assert m28.features[0].padding == (2, 2)  # LeCun's 28 → 32 zero padding
    m32 = make("lenet").build(num_classes=10, channels=3, image_size=32)
    assert m32.features[0].padding == (0, 0)
    assert m28.classifier[1].in_features == m32.classifier[1].in_features == 16 * 5 * 5
    x = torch.randn(4, 1, 28, 28)
    m28.train()
    assert not torch.equal(m28(x), m28(x))  # dropout active
    m28.eval()
    assert torch.equal(m28(x), m28(x))
    with pytest.raises(ValidationError):
        make("lenet", dropout=1.0)
    with pytest.raises(ValidationError):
        make("lenet", dropuot=0.1)
    # width multiplies every layer (the oracle's default is width 2): 3·12·25+12, 12·32·25+32, 32·25·240+240, …
    wide = make("lenet", width=2)
    m = wide.build(num_classes=10, channels=3, image_size=28)
    assert [p.numel() for p in m.parameters() if p.ndim > 1] == [900, 9600, 192000, 40320, 1680]
    assert wide.describe()["num_params"] == 244962 and wide.describe()["width"] == 2
    assert make("lenet").build(num_classes=10, channels=3, image_size=28).classifier[1].out_features == 120


def test_bf16_autocast():
    for name in ("lenet", "timm:test_resnet"):
        clf = make(name)
        model = clf.build(num_classes=5, channels=3, image_size=32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 5) and torch.isfinite(out.float()).all()


# ------------------------------------------------------------------------------------------- small inputs


@pytest.mark.parametrize(
    "name,options,image_size,expected",
    [
        ("resnet50", {}, 32, 32),
        ("resnet50", {"small_input": "resize"}, 32, 224),
        ("resnet50", {"small_input": "resize", "resize_to": 64}, 28, 64),
        ("resnet50", {"pretrained": True}, 32, 224),  # auto → resize when pretrained
        ("resnet50", {"pretrained": True, "small_input": "adapt"}, 32, 32),
        ("vgg19", {}, 28, 32),  # five 2× pools need ≥ 32 px
        ("deit-s", {}, 28, 28),
        ("deit-s", {}, 30, 32),  # rounded up to a multiple of the 4-px patch
        ("alexnet", {"small_input": "resize"}, 28, 224),
        ("mobilenet-v3", {}, 224, 224),
        ("timm:test_resnet", {"small_input": "resize"}, 32, 160),  # the model's native size
    ],
)
def test_input_size(name, options, image_size, expected):
    assert make(name, **options).input_size(image_size) == expected


def test_small_input_is_recorded():
    clf = make("resnet50")
    clf.build(num_classes=10, channels=3, image_size=32)
    rec = clf.describe()
    assert rec["small_input"] == "adapt" and rec["small_input_option"] == "auto"
    assert any("3×3 stride 1" in c for c in rec["input_handling"])
    clf = make("resnet50", small_input="resize", resize_to=64)
    clf.build(num_classes=10, channels=3, image_size=32)
    assert clf.describe()["input_handling"][0] == "input resized 32→64 px by the harness"


@pytest.mark.parametrize("name,side", [("resnet50", 4), ("mobilenet-v3", 4), ("alexnet", 3)])
def test_adapt_removes_the_early_downsampling(name, side):
    model = make(name).build(num_classes=10, channels=3, image_size=32).eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 32, 32)
        features = model.features(x) if name == "alexnet" else model.forward_features(x)
    assert features.shape[-2:] == (side, side)


def test_deit_adapt_uses_small_patches():
    clf = make("deit-s")
    model = clf.build(num_classes=10, channels=3, image_size=32)
    assert model.patch_embed.patch_size == (4, 4) and model.patch_embed.num_patches == 64


def test_vgg_adapted_head_is_the_same_function():
    import copy

    import timm

    from plugins.classifiers.timm_models import VGG19

    torch.manual_seed(0)
    native = timm.create_model("vgg11", num_classes=7, mlp_ratio=1 / 16).eval()  # a small head, same ConvMlp
    adapted = copy.deepcopy(native)
    notes = make("vgg19").adapt_module(adapted, channels=3, small=True, pretrained=False)
    assert notes and adapted.pre_logits.fc1.kernel_size == (1, 1)
    assert isinstance(make("vgg19"), VGG19)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), native(x), rtol=1e-4, atol=1e-5)


def test_timm_unknown_names_say_did_you_mean():
    with pytest.raises(ConfigError, match="Did you mean.*'resnet18'"):
        make("timm:resnet-18")
    with pytest.raises(ConfigError, match="no pretrained tag 'bogus'.*tv_in1k"):
        make("timm:resnet50.bogus")
    cls, _ = registry().get("timm:resnet18")
    with pytest.raises(ConfigError, match="needs a model name"):
        cls(cls.Options(), variant=None)


def test_timm_fixed_size_models_adapt_or_say_resize():
    clf = make("timm:test_vit")
    model = clf.build(num_classes=4, channels=3, image_size=32)  # built with img_size=32
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    assert "timm img_size=32" in clf.describe()["input_handling"]
    with pytest.raises(ConfigError, match="small_input: resize"):
        make("timm:test_vit").build(num_classes=4, channels=3, image_size=28)  # 16-px patches do not divide 28


def test_options_are_checked():
    with pytest.raises(ValidationError, match="pretrained"):
        make("resnet50", weights="/tmp/w.safetensors")  # weights without pretrained
    with pytest.raises(ValidationError, match="safetensors"):
        make("resnet50", pretrained=True, weights="/tmp/w.txt")
    with pytest.raises(ValidationError):
        make("resnet50", small_input="crop")
    with pytest.raises(ValidationError):
        make("mobilenet-v3", pretrianed=True)


def test_normalization():
    assert make("resnet50").normalization(3) == ((0.5,) * 3, (0.5,) * 3)
    mean, std = make("resnet50", pretrained=True).normalization(3)
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))
    mean, std = make("deit-s", pretrained=True).normalization(1)
    assert mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))


# ------------------------------------------------------------------------------------------- pretrained weights


@pytest.mark.parametrize("name", ["alexnet", "vgg19", "resnet50", "mobilenet-v3", "deit-s", "timm:test_resnet"])
def test_pretrained_without_weights_is_one_clear_sentence(name):
    with pytest.raises(WeightsError) as err:
        make(name, pretrained=True).build(num_classes=10, channels=3, image_size=32)
    msg = str(err.value)
    assert "`weights`" in msg and "not on disk" in msg and msg.count(". ") == 0 and msg.endswith(".")
    assert ("hf download timm/" in msg) or ("download.pytorch.org" in msg)


def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        make("timm:test_resnet", pretrained=True, weights=str(tmp_path / "nope.safetensors")).build(
            num_classes=10, channels=3, image_size=32
        )


def _save(state: dict, path):
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return path


@pytest.mark.parametrize("filename", ["w.safetensors", "w.pth"])
def test_timm_loads_a_local_file(tmp_path, filename):
    import timm

    torch.manual_seed(1)
    source = timm.create_model("test_resnet")  # 1000 classes, 3 channels: an "ImageNet" checkpoint
    path = _save(source.state_dict(), tmp_path / filename)
    clf = make("timm:test_resnet", pretrained=True, weights=str(path))
    model = clf.build(num_classes=10, channels=3, image_size=32)
    torch.testing.assert_close(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert model.fc.out_features == 10  # the 1000-class head is dropped
    rec = clf.describe()
    assert rec["weights"]["origin"] == "file" and len(rec["weights"]["sha256"]) == 64
    assert rec["weights"]["loaded_fraction"] > 0.9
    assert rec["small_input"] == "resize" and rec["input_size"] == 160
    grey = make("timm:test_resnet", pretrained=True, weights=str(path)).build(num_classes=10, channels=1, image_size=28)
    torch.testing.assert_close(grey.conv1[0].weight, source.conv1[0].weight.sum(dim=1, keepdim=True))


def test_weights_that_do_not_fit(tmp_path):
    import timm

    path = _save(timm.create_model("test_resnet").state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(WeightsError, match="does not fit"):
        make("timm:test_byobnet", pretrained=True, weights=str(path)).build(num_classes=10, channels=3, image_size=32)


def test_timm_finds_the_hugging_face_cache(_empty_weight_caches):
    import timm

    torch.manual_seed(2)
    source = timm.create_model("test_resnet")
    repo = _empty_weight_caches / "hf" / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    _save(source.state_dict(), snap / "model.safetensors")
    clf = make("timm:test_resnet", pretrained=True)
    model = clf.build(num_classes=3, channels=3, image_size=32)
    torch.testing.assert_close(model.layer2[0].conv2.weight, source.layer2[0].conv2.weight)
    assert clf.describe()["weights"]["origin"] == "hf-cache"


def test_adapt_with_pretrained_reinitialises_the_stem(tmp_path):
    import timm

    from plugins.classifiers.timm_models import ResNet50

    class ResNet18(ResNet50):  # the same stem surgery on a smaller network
        timm_name = "resnet18"

    torch.manual_seed(3)
    source = timm.create_model("resnet18")
    path = _save(source.state_dict(), tmp_path / "r18.safetensors")
    clf = ResNet18(ResNet18.Options(pretrained=True, weights=str(path), small_input="adapt"))
    model = clf.build(num_classes=10, channels=3, image_size=32)
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, torch.nn.Identity)
    torch.testing.assert_close(model.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert any("re-initialised" in c for c in clf.describe()["input_handling"])
    train_step(model, 32, 3, 10)


def test_deit_patch_resampling_from_a_native_checkpoint(tmp_path):
    import timm

    from plugins.classifiers.timm_models import DeiTSmall

    class TinyViT(DeiTSmall):  # DeiT-S's adaptation on timm's test ViT (16-px patches, 160 px)
        timm_name = "test_vit"

    source = timm.create_model("test_vit")
    path = _save(source.state_dict(), tmp_path / "vit.safetensors")
    clf = TinyViT(TinyViT.Options(pretrained=True, weights=str(path), small_input="adapt"))
    model = clf.build(num_classes=10, channels=3, image_size=32)
    assert model.patch_embed.proj.weight.shape[-2:] == (4, 4) and model.pos_embed.shape[1] == 64 + 1
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_alexnet_from_the_torch_hub_cache(_empty_weight_caches):
    import torchvision

    torch.manual_seed(4)
    source = torchvision.models.alexnet(weights=None)
    ckpt = _empty_weight_caches / "torch" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(source.state_dict(), ckpt / "alexnet-owt-7be5be79.pth")
    clf = make("alexnet", pretrained=True)
    model = clf.build(num_classes=10, channels=1, image_size=28)
    assert clf.input_size(28) == 224 and clf.describe()["weights"]["origin"] == "torch-hub-cache"
    torch.testing.assert_close(model.features[3].weight, source.features[3].weight)
    torch.testing.assert_close(model.features[0].weight, source.features[0].weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.classifier[4].weight, source.classifier[4].weight)
    assert model.classifier[6].out_features == 10
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 224, 224)).shape == (1, 10)
    assert math.isclose(clf.normalization(1)[1][0], sum((0.229, 0.224, 0.225)) / 3)
