"""sd15-lora on a tiny Stable-Diffusion-shaped pipeline written to disk: the real loading, LoRA, training,
sampling and state paths, no hub weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from harness.errors import WeightsError
from harness.interfaces import Runtime
from harness.imageset import ImageSet
from harness.engine.progress import NullReporter
from tests.conftest import tiny_config

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from plugins.generators.sd15_lora import SD15LoRA, base_model_sha256, resolve_model  # noqa: E402

CLASSES = ("zero", "one", "two")


def write_tiny_sd(root: Path) -> Path:
    """A diffusers ``StableDiffusionPipeline`` directory with random tiny components (latent ×2, UNet ×2)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    raw = root / "tokenizer-files"
    raw.mkdir(parents=True)
    # a byte-level BPE vocabulary with no merges: every character is a token (CLIP's layout, minus the merges)
    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (raw / "vocab.json").write_text(json.dumps(vocab))
    (raw / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(raw, model_max_length=16)

    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    ))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
        sample_size=32,
    )
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(root / "sd")
    return root / "sd"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return write_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


def make(model: Path | str, tmp_path: Path, *, channels: int = 1, image_size: int = 28, **options) -> SD15LoRA:
    base = dict(model=str(model), rank=2, steps=2, batch_size=4, resolution=32, sample_steps=2, sample_batch_size=3)
    base.update(options)
    runtime = Runtime("cpu", "fp32", 0, NullReporter(), tmp_path)
    return SD15LoRA(SD15LoRA.Options(**base), num_classes=len(CLASSES), channels=channels, image_size=image_size,
                    class_names=CLASSES, runtime=runtime)


def toy_data(n: int = 12, channels: int = 1, size: int = 28) -> ImageSet:
    g = torch.Generator().manual_seed(1)
    return ImageSet.create(torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g),
                           torch.arange(n) % len(CLASSES))


def test_fit_sample_and_lora_state_round_trip(tiny_sd, tmp_path):
    torch.manual_seed(0)
    gen = make(tiny_sd, tmp_path, lr=1e-2)
    lora_before = {k: v.clone() for k, v in gen.state_dict().items()}
    base_before = {k: v.clone() for k, v in gen.unet.state_dict().items() if "lora" not in k}
    stats = gen.fit(toy_data())
    assert stats["steps"] == 2 and stats["images_seen"] == 8 and stats["lora_parameters"] > 0
    assert stats["base_model"] == str(tiny_sd) and stats["base_model_sha256"] == base_model_sha256(tiny_sd, None)

    state = gen.state_dict()
    # only the adapter travels: flat float tensors, named after the UNet's attention projections
    assert state and set(state) == set(lora_before)
    assert all(".lora_A." in k or ".lora_B." in k for k in state)
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in state} <= {"to_q", "to_k", "to_v", "0"}
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in state.values())
    assert any(not torch.equal(state[k], lora_before[k]) for k in state), "training did not move the LoRA"
    # the base model is frozen
    assert all(torch.equal(v, base_before[k]) for k, v in gen.unet.state_dict().items() if "lora" not in k)

    labels = torch.tensor([0, 1, 2, 2])
    torch.manual_seed(7)
    images = gen.sample(labels)
    assert images.dtype == torch.uint8 and images.shape == (4, 1, 28, 28)

    fresh = make(tiny_sd, tmp_path)
    fresh.load_state_dict(state)
    torch.manual_seed(7)
    assert torch.equal(fresh.sample(labels), images)

    with pytest.raises(KeyError, match="does not fit"):
        make(tiny_sd, tmp_path, rank=3).load_state_dict(state)


def test_rgb_without_guidance_and_other_sampler(tiny_sd, tmp_path):
    gen = make(tiny_sd, tmp_path, channels=3, image_size=32, guidance_scale=1.0, sampler="ddim", resize="area",
               prompt_template="{class_name}, a drawing")
    assert gen.prompts() == ["zero, a drawing", "one, a drawing", "two, a drawing"]
    gen.fit(toy_data(6, channels=3, size=32))
    torch.manual_seed(3)
    a = gen.sample(torch.tensor([0, 1]))
    torch.manual_seed(3)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, gen.sample(torch.tensor([0, 1])))


def test_missing_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(WeightsError) as err:
        make(tmp_path / "nowhere", tmp_path)
    message = str(err.value)
    assert "huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "generator.options.model=" in message
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model_index.json").write_text("{}")
    with pytest.raises(WeightsError, match="not a complete diffusers directory"):
        make(tmp_path / "half", tmp_path)


def test_hub_id_is_resolved_from_the_local_cache_only(tiny_sd, tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-sd"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_sd, repo / "snapshots" / commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("someone/tiny-sd") == repo / "snapshots" / commit
    with pytest.raises(WeightsError, match="nor in the Hugging Face cache"):
        resolve_model("someone/not-downloaded")
    # the hash covers what is loaded: touching a weights file changes it, an unrelated file does not
    before = base_model_sha256(repo / "snapshots" / commit, None)
    (repo / "snapshots" / commit / "unet" / "notes.md").write_text("unrelated")
    assert base_model_sha256(repo / "snapshots" / commit, None) == before
    weights = repo / "snapshots" / commit / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    assert base_model_sha256(repo / "snapshots" / commit, None) != before


def test_options_are_checked(tiny_sd, tmp_path):
    from harness.errors import ConfigError

    with pytest.raises(ValueError, match="class_name"):
        SD15LoRA.Options(prompt_template="a photo of a {label}")
    with pytest.raises(ConfigError, match="multiple of 4"):
        make(tiny_sd, tmp_path, resolution=30)


def test_bench_run_end_to_end(tiny_sd, tmp_path):
    from harness.cli import app

    cfg = tiny_config(
        out=str(tmp_path / "runs"),
        precision="fp32",
        dataset={"name": "colored-mnist", "options": {"source": "embedded", "train_size": 200, "test_size": 100}},
        generator={"name": "sd15-lora", "options": {
            "model": str(tiny_sd), "rank": 2, "steps": 2, "batch_size": 4, "resolution": 32, "sample_steps": 2,
            "sample_batch_size": 20, "guidance_scale": 2.0}},
        filter={"name": "none"},
        loop={"generations": 1, "samples_per_generation": 40},
        metrics={"fid": {"backbone": "none"}, "oracle": {"classifier": "lenet", "max_epochs": 1}},
    )
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(cfg))
    r = CliRunner().invoke(app, ["run", "--config", str(path), "--out", str(tmp_path / "runs"), "--quiet"])
    assert r.exit_code == 0, r.output
    results = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    assert results["status"] == "complete"
    assert len(results["generations"]) == 2
