"""The clip filter on a tiny, randomly initialised open_clip model (no weights are ever downloaded): the real
scoring path, prompts from class names, the paper's binning, and the missing-weights message."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from pydantic import ValidationError

from harness.errors import ConfigError, WeightsError
from harness.interfaces import FilterContext, Runtime
from harness.imageset import ImageSet
from harness.plugin.manager import create_plugin_manager

pytest.importorskip("open_clip")

#: A tiny CLIP (random weights, for tests): 32 px images, 8-px patches, one layer per tower.
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
NAMES = ("digit 0", "digit 1", "digit 2")


class Reporter:
    def __init__(self):
        self.tasks = []

    @contextmanager
    def task(self, description, total):
        self.tasks.append((description, total))
        yield None


def make(**options):
    cls, _ = create_plugin_manager().registry("filters").get("clip")
    return cls(cls.Options.model_validate(options))


def tiny(**options):
    return make(pretrained=None, model_cfg=TINY, **options)


def context(tmp_path, names=NAMES, precision="fp32", reporter=None) -> FilterContext:
    runtime = Runtime(device="cpu", precision=precision, seed=0, reporter=reporter or Reporter(), workdir=tmp_path)
    return FilterContext(generation=1, classifiers=(), class_names=names, runtime=runtime, review_dir=tmp_path)


def candidates(n=12, channels=1, side=28, seed=0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, side, side), dtype=torch.uint8, generator=g)
    return ImageSet.create(images, torch.arange(n) % len(NAMES), origin=1)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test loudly."""
    import open_clip.pretrained as pre

    def refuse(*args, **kwargs):
        raise AssertionError("the clip filter tried to download weights")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("download_pretrained", "download_pretrained_from_hf", "download_pretrained_from_url"):
        monkeypatch.setattr(pre, name, refuse)
    torch.set_num_threads(1)


def test_registered():
    assert "clip" in create_plugin_manager().registry("filters").names()
    assert not make().needs_classifiers


def test_scores_shape_finite_and_deterministic(tmp_path):
    cands, reporter = candidates(), Reporter()
    torch.manual_seed(1)
    a = tiny(batch_size=5).score(cands, context(tmp_path, reporter=reporter))
    torch.manual_seed(2)  # the random init is fixed, whatever the harness's RNG state
    b = tiny(batch_size=5).score(cands, context(tmp_path))
    assert a.shape == (12,) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert (a.abs() <= 100.0 + 1e-3).all()  # 100 × cosine
    assert torch.equal(a, b)
    assert reporter.tasks == [("clip", 3)]  # batched: 12 images in batches of 5
    assert a.std() > 0  # not constant


def test_scores_are_100_cosine_with_the_prompt_of_the_conditioning_class(tmp_path):
    from plugins.filters.clip import CLIP_MEAN, CLIP_STD, preprocess

    f = tiny()
    cands = candidates(6)
    scores = f.score(cands, context(tmp_path))
    model, tokenizer, mean, std, side = f.load_model("cpu")
    assert (mean, std, side) == (CLIP_MEAN, CLIP_STD, 32)
    assert f.prompts(NAMES) == ["a photo of a digit 0", "a photo of a digit 1", "a photo of a digit 2"]
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(preprocess(cands.images, side, m, s)), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tokenizer(f.prompts(NAMES))), dim=-1)
    expected = 100 * (img @ txt.T)  # N × L
    torch.testing.assert_close(scores, expected[torch.arange(6), cands.labels], rtol=1e-4, atol=1e-3)
    # other class names (and another template) give other prompts and so other scores
    other = tiny().score(cands, context(tmp_path, names=("cat", "dog", "bird")))
    templated = tiny(prompt_template="{name}").score(cands, context(tmp_path))
    assert not torch.allclose(scores, other) and not torch.allclose(scores, templated)


def test_preprocessing_grey_and_colour_and_bf16(tmp_path):
    from plugins.filters.clip import preprocess

    m, s = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    grey = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    x = preprocess(grey, 32, m, s)
    assert x.shape == (2, 3, 32, 32) and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert preprocess(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), 32, m, s).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="channels"):
        preprocess(torch.zeros(1, 2, 8, 8, dtype=torch.uint8), 32, m, s)
    rgb = tiny().score(candidates(4, channels=3, side=32), context(tmp_path, precision="bf16"))
    assert rgb.shape == (4,) and torch.isfinite(rgb).all()


def test_a_local_checkpoint_is_loaded(tmp_path):
    from safetensors.torch import save_file

    f = tiny()
    model, *_ = f.load_model("cpu")
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    cands = candidates(5)
    from_file = make(model_cfg=TINY, pretrained=None, checkpoint=str(path)).score(cands, context(tmp_path))
    torch.testing.assert_close(from_file, f.score(cands, context(tmp_path)))
    with pytest.raises(WeightsError, match="does not exist"):
        make(model_cfg=TINY, pretrained=None, checkpoint=str(tmp_path / "nope.bin")).score(cands, context(tmp_path))


# ------------------------------------------------------------------ binning


def test_binning_keeps_whole_top_bins_per_class():
    from plugins.filters.clip import bin_index

    # range [0, 100], 10 bins of width 10. Class 0: bin 9 holds 100, 95, 92; bin 8 holds 85, 81; then 40.
    # Class 1: 50 and 51 share bin 5, 0 and 5 share bin 0.
    scores = torch.tensor([100.0, 95, 92, 85, 81, 40, 0, 5, 50, 51])
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    assert bin_index(scores, 10).tolist() == [9, 9, 9, 8, 8, 4, 0, 0, 5, 5]
    f = tiny(binning=True)
    # keep 0.5: class 0 needs 3 → exactly bin 9; class 1 needs 2 → exactly bin 5
    assert f.select(scores, labels, 0.5).tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 1, 1]
    # keep 0.6: class 0 needs 4 → bins 9 and 8 whole (5, more than 4); class 1 needs 2 (2.4 rounds to 2)
    assert f.select(scores, labels, 0.6).tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 1, 1]
    # keep 0.7: class 1 needs 3 → bin 5, then bin 0 whole (both 0 and 5)
    assert f.select(scores, labels, 0.7).tolist() == [1, 1, 1, 1, 1, 0, 1, 1, 1, 1]
    # coarser bins: 2 bins of width 50 → class 0 keeps all of [50, 100] at keep 0.5
    assert tiny(binning=True, bins=2).select(scores, labels, 0.5).tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 1, 1]
    # without binning the harness's per-class top-keep rule applies
    assert tiny().select(scores, labels, 0.5) is None


def test_binning_edge_cases():
    f = tiny(binning=True)
    same = torch.full((6,), 3.0)
    assert f.select(same, torch.tensor([0, 0, 0, 1, 1, 1]), 0.5).all()  # one bin: all kept
    lone = f.select(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1, 1]), 0.1)
    assert lone.tolist() == [True, False, True]  # at least one per class
    assert f.select(torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).shape == (0,)


def test_binning_on_real_scores(tmp_path):
    f = tiny(binning=True)
    cands = candidates(30)
    scores = f.score(cands, context(tmp_path))
    mask = f.select(scores, cands.labels, 0.5)
    from plugins.filters.clip import bin_index

    b = bin_index(scores, 10)
    for c in range(3):
        in_c = cands.labels == c
        kept, dropped = b[in_c & mask], b[in_c & ~mask]
        assert kept.numel() >= 5  # ≥ keep fraction
        if dropped.numel():
            assert int(kept.min()) > int(dropped.max())  # whole bins: no bin split between kept and dropped


# ------------------------------------------------------------------ weights and options


def test_missing_pretrained_weights_is_one_sentence(tmp_path):
    with pytest.raises(WeightsError) as info:
        make(cache_dir=str(tmp_path / "empty-cache")).score(candidates(2), context(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg and msg.endswith(".") and msg.count(". ") == 0
    assert "ViT-B-32/openai" in msg and "hf download timm/vit_base_patch32_clip_224.openai" in msg
    assert "checkpoint: /path/to/" in msg


def test_cached_weights_are_found_without_downloading(tmp_path):
    from plugins.filters.clip import find_cached

    snap = tmp_path / "models--timm--some-clip" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"x")
    (tmp_path / "models--timm--some-clip" / "refs").mkdir()
    (tmp_path / "models--timm--some-clip" / "refs" / "main").write_text("abc123")
    hit = find_cached({"hf_hub": "timm/some-clip/"}, str(tmp_path))
    assert hit is not None and hit.endswith("open_clip_model.safetensors")
    assert find_cached({"hf_hub": "timm/other-clip/"}, str(tmp_path)) is None
    (tmp_path / "ViT-X.pt").write_bytes(b"x")
    assert find_cached({"url": "https://example.org/a/ViT-X.pt"}, str(tmp_path)) == str(tmp_path / "ViT-X.pt")


def test_unknown_tag_and_model_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not an open_clip tag"):
        make(pretrained="nonsense").score(candidates(2), context(tmp_path))
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        make(model="ViT-Nope", pretrained=None).score(candidates(2), context(tmp_path))


def test_options_are_checked():
    with pytest.raises(ValidationError):
        make(prompt_template="a photo")
    with pytest.raises(ValidationError):
        make(model_cfg=TINY)  # a custom config has no pretrained tag: needs pretrained null or a checkpoint
    with pytest.raises(ValidationError):
        make(model_cfg={"embed_dim": 4})
    with pytest.raises(ValidationError):
        make(bins=0)
    with pytest.raises(ValidationError):
        make(modle="RN50")
    assert make().options.pretrained == "openai" and make().options.model == "ViT-B-32"


def test_no_candidates(tmp_path):
    assert tiny().score(candidates(0), context(tmp_path)).shape == (0,)
