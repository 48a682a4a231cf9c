"""Text-to-image latent diffusion: captions, tokenizer, VAE and UNet trainers, Stable Diffusion export, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from test_reliability_resume import Crash
from transformers import CLIPTokenizer

import lightning_fair.pretraining.latent as latent_pretraining
from lightning_fair.data import CelebADataModule
from lightning_fair.data.captions import CaptionWriter, caption_words
from lightning_fair.data.vocabulary import write_tokenizer
from lightning_fair.diffusion.seeding import training_generators
from lightning_fair.main import main
from lightning_fair.models import resolve_model_path
from lightning_fair.pretraining import LatentDiffusionPretraining, VAEPretraining

REPO_ROOT = Path(__file__).resolve().parents[1]
ATTRIBUTES = ["Male", "Blond_Hair", "Black_Hair", "Brown_Hair", "Eyeglasses", "Smiling", "Bangs", "Pale_Skin"]
TINY_UNET = {
    "block_out_channels": (8, 16),
    "attention_head_dim": 2,
    "norm_num_groups": 4,
    "text_hidden_size": 8,
    "text_layers": 1,
    "text_heads": 2,
    "text_intermediate_size": 16,
    "warmup_steps": 1,
}


def datamodule(root: Path, **options: object) -> CelebADataModule:
    settings = {"image_size": 32, "batch_size": 8, "num_workers": 0}
    return CelebADataModule(str(root), ATTRIBUTES, "Male", **{**settings, **options})  # type: ignore[arg-type]


def trainer(
    root: Path, steps: int | None = None, callbacks: list[Callback] | None = None, **options: object
) -> Trainer:
    return Trainer(
        max_steps=steps or -1,
        limit_val_batches=1,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **options,  # type: ignore[arg-type]
    )


def tiny_vae_module(output_dir: Path) -> VAEPretraining:
    torch.manual_seed(0)
    return VAEPretraining(
        str(output_dir), block_out_channels=(8, 8, 8), norm_num_groups=4, warmup_steps=1, scaling_images=64
    )


def tiny_unet_module(output_dir: Path, vae: Path, **options: object) -> LatentDiffusionPretraining:
    torch.manual_seed(0)
    return LatentDiffusionPretraining(str(output_dir), str(vae), ATTRIBUTES, **{**TINY_UNET, **options})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny AutoencoderKL folder (32x32x3 <-> 4x8x8)."""
    folder = tmp_path_factory.mktemp("models") / "vae"
    return tiny_vae_module(folder).export(folder)


# ---------------------------------------------------------------------------------------------------- captions


def draw(writer: CaptionWriter, labels: list[int], count: int, seed: int = 0, epoch: int = 0) -> list[str]:
    attributes = torch.tensor([labels] * count)
    return writer(attributes, training_generators(seed, epoch, torch.arange(count)))


def test_caption_names_each_present_attribute_in_order() -> None:
    writer = CaptionWriter(ATTRIBUTES, person_probability=0.0, phrase_dropout=0.0, empty_probability=0.0)
    woman = [0, 1, 0, 0, 1, 1, 0, 0]
    man = [1, 0, 1, 0, 0, 0, 1, 1]
    assert draw(writer, woman, 1) == ["a photo of a woman with blond hair, wearing glasses, smiling"]
    assert draw(writer, man, 1) == ["a photo of a man with black hair, with bangs, with pale skin"]
    neutral = CaptionWriter(["Blond_Hair"], phrase_dropout=0.0, empty_probability=0.0)  # no gender column
    assert draw(neutral, [1], 1) == ["a photo of a person with blond hair"]


def test_caption_shares_of_person_dropped_phrases_and_empty() -> None:
    writer = CaptionWriter(ATTRIBUTES, person_probability=0.5, phrase_dropout=0.3, empty_probability=0.1)
    captions = draw(writer, [1, 0, 0, 1, 1, 0, 0, 0], 4000)  # a man with brown hair and glasses
    share = {
        "empty": sum(caption == "" for caption in captions) / 4000,
        "person": sum(" person" in caption for caption in captions) / 4000,
        "man": sum(" man" in caption for caption in captions) / 4000,
        "glasses": sum("glasses" in caption for caption in captions) / 4000,
    }
    assert share["empty"] == pytest.approx(0.1, abs=0.02)
    assert share["person"] == pytest.approx(0.9 * 0.5, abs=0.03)
    assert share["man"] == pytest.approx(0.9 * 0.5, abs=0.03)
    assert share["glasses"] == pytest.approx(0.9 * 0.7, abs=0.03)
    assert not any("woman" in caption or "smiling" in caption for caption in captions)
    assert "a photo of a person" in captions  # the neutral prompt itself, every phrase dropped


def test_captions_depend_only_on_seed_epoch_and_index() -> None:
    writer = CaptionWriter(ATTRIBUTES)
    labels = [0, 1, 0, 0, 1, 1, 1, 0]
    first = draw(writer, labels, 64)
    assert draw(writer, labels, 64) == first
    reversed_order = writer(torch.tensor([labels] * 64), training_generators(0, 0, torch.arange(63, -1, -1)))
    assert reversed_order == first[::-1]
    assert draw(writer, labels, 64, seed=1) != first
    assert draw(writer, labels, 64, epoch=1) != first
    assert len(set(first)) > 5


def test_caption_options_are_checked() -> None:
    with pytest.raises(ValueError, match="Option 'phrase_dropout' must be a probability in \\[0, 1\\], got 1.5"):
        CaptionWriter(ATTRIBUTES, phrase_dropout=1.5)
    with pytest.raises(ValueError, match="The batch has 2 attribute columns but the captions expect 8"):
        CaptionWriter(ATTRIBUTES)(torch.zeros(1, 2, dtype=torch.long), training_generators(0, 0, torch.arange(1)))


# --------------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_folder_gives_each_caption_word_one_token(tmp_path: Path) -> None:
    folder = write_tokenizer(tmp_path / "tokenizer", caption_words(), max_length=32)
    assert {"vocab.json", "merges.txt"} <= {path.name for path in folder.iterdir()}
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    assert tokenizer.model_max_length == 32
    for word in caption_words():
        ids = tokenizer(word, add_special_tokens=False).input_ids
        assert len(ids) == 1, word
        assert tokenizer.decode(ids).strip() == word
    caption = "a photo of a woman with blond hair, wearing glasses, smiling"
    ids = tokenizer(caption, padding="max_length", max_length=32).input_ids
    assert len(ids) == 32
    assert ids[:2] == [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("a</w>")]
    words = caption.replace(",", " ,").split()
    assert tokenizer.convert_ids_to_tokens(ids[1 : len(words) + 1]) == [word + "</w>" for word in words]
    assert ids[len(words) + 1 :] == [tokenizer.eos_token_id] * (31 - len(words))  # the end token pads
    assert tokenizer("").input_ids == [tokenizer.bos_token_id, tokenizer.eos_token_id]


def test_unknown_words_fall_back_to_pieces(tmp_path: Path) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(tmp_path, caption_words(), max_length=32))
    assert tokenizer.tokenize("A Cat!") == ["a</w>", "c", "a", "t</w>", "!</w>"]
    ids = tokenizer("a smiling dog").input_ids
    assert tokenizer.unk_token_id not in ids[1:-1]
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == "a smiling dog"
    with pytest.raises(ValueError, match="Vocabulary word 'Two words' must be non-empty, lower-case"):
        write_tokenizer(tmp_path, ["Two words"], max_length=32)


# --------------------------------------------------------------------------------------------------------- VAE


def test_vae_fit_exports_an_autoencoder_with_the_latents_scaling(faces_root: Path, tmp_path: Path) -> None:
    module = tiny_vae_module(tmp_path / "vae")
    before = [parameter.detach().clone() for parameter in module.vae.parameters()]
    trainer(tmp_path, steps=2).fit(module, datamodule(faces_root))
    assert any(not torch.equal(a, b) for a, b in zip(before, module.vae.parameters(), strict=True))
    vae = AutoencoderKL.from_pretrained(tmp_path / "vae")
    images = torch.rand(64, 3, 32, 32) * 2 - 1
    latents = vae.encode(images).latent_dist.mean
    assert latents.shape == (64, 4, 8, 8)
    assert vae.config.scaling_factor != AutoencoderKL().config.scaling_factor
    assert vae.decode(latents).sample.shape == images.shape
    assert not list(tmp_path.glob(".vae.*"))


# --------------------------------------------------------------------------------------------- text to image


def test_unet_fit_exports_a_stable_diffusion_pipeline(faces_root: Path, tiny_vae: Path, tmp_path: Path) -> None:
    module = tiny_unet_module(tmp_path / "sd", tiny_vae)
    before = [parameter.detach().clone() for parameter in module.denoiser.parameters()]
    trainer(tmp_path, steps=2).fit(module, datamodule(faces_root))
    assert any(not torch.equal(a, b) for a, b in zip(before, module.denoiser.parameters(), strict=True))
    assert module.latents.shape == (240, 2, 4, 8, 8)  # every train image, plain and mirrored
    folder = tmp_path / "sd"
    record = json.loads((folder / "lightning_fair.json").read_text())
    conditioning = {"kind": "text", "neutral_prompt": "a photo of a person"}
    assert record == {"conditioning": conditioning, "image_size": 32, "center_crop_fraction": 1.0}
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["_class_name"] == "StableDiffusionPipeline"
    assert model_index["safety_checker"] == [None, None]
    assert model_index["requires_safety_checker"] is False
    pipeline = StableDiffusionPipeline.from_pretrained(folder)
    scheduler = pipeline.scheduler.config
    assert type(pipeline.scheduler).__name__ == "DDIMScheduler"
    assert (scheduler.beta_schedule, scheduler.beta_start, scheduler.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert (scheduler.steps_offset, scheduler.clip_sample, scheduler.set_alpha_to_one) == (1, False, False)
    assert pipeline.unet.config.cross_attention_dim == pipeline.text_encoder.config.hidden_size == 8
    assert pipeline.vae.config.scaling_factor == AutoencoderKL.from_pretrained(tiny_vae).config.scaling_factor
    generator = torch.Generator().manual_seed(0)
    images = pipeline(
        ["a photo of a man", ""], num_inference_steps=2, guidance_scale=2.0, generator=generator, output_type="pt"
    ).images
    assert images.shape == (2, 3, 32, 32)
    assert torch.isfinite(images).all()
    assert not list(tmp_path.glob(".sd.*"))


def test_a_failed_export_leaves_the_previous_model(
    tiny_vae: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tiny_unet_module(tmp_path / "sd", tiny_vae)
    folder = module.export(tmp_path / "sd")
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(latent_pretraining, "write_tokenizer", fail)
    with pytest.raises(OSError, match="disk full"):
        module.export(folder)
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["sd"]  # no staging folder left


def test_unet_options_are_checked(faces_root: Path, tiny_vae: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Option 'neutral_prompt' \\('a photo of a cat'\\) has words no caption"):
        tiny_unet_module(tmp_path, tiny_vae, neutral_prompt="a photo of a cat")
    with pytest.raises(ValueError, match="Option 'text_heads' \\(3\\) must divide 'text_hidden_size' \\(8\\)"):
        tiny_unet_module(tmp_path, tiny_vae, text_heads=3)
    with pytest.raises(FileNotFoundError, match="No VAE for option 'vae' at"):
        tiny_unet_module(tmp_path, tmp_path / "missing")
    with pytest.raises(ValueError, match="Option 'image_size' of LatentDiffusionPretraining is 16 but"):
        trainer(tmp_path, steps=1).fit(
            tiny_unet_module(tmp_path / "sd", tiny_vae, image_size=16), datamodule(faces_root)
        )


def test_configs_fit_the_vae_then_the_pipeline_from_the_command_line(
    faces_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both configs with tiny models, in the order of their comments; the second reads the first one's VAE."""
    monkeypatch.chdir(tmp_path)
    common = [
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        f"--dataset.init_args.root={faces_root}",
        "--dataset.init_args.synthetic.init_args.num_images=300",  # the settings faces_root was written with
        "--dataset.init_args.synthetic.init_args.seed=3",
        "--dataset.init_args.batch_size=8",
        "--dataset.init_args.num_workers=0",
    ]
    vae = ["--model.init_args.block_out_channels=[8, 8, 8]", "--model.init_args.norm_num_groups=4"]
    unet = [
        f"--model.init_args.{name}={list(value) if isinstance(value, tuple) else value}"
        for name, value in TINY_UNET.items()
    ]
    setup = ["-c", str(REPO_ROOT / "configs" / "setups" / "synthetic_faces_sd.yaml")]
    training = REPO_ROOT / "configs" / "training"
    main(["fit", *setup, "-c", str(training / "pretrain_vae.yaml"), *common, *vae])
    assert (tmp_path / "models/synthetic_faces_sd/vae/config.json").is_file()
    main(["fit", *setup, "-c", str(training / "pretrain_latent.yaml"), *common, *unet])
    assert (tmp_path / "logs/synthetic_faces_sd/pretrain_latent/version_0/hparams.yaml").is_file()  # model + data
    pipeline = StableDiffusionPipeline.from_pretrained(tmp_path / "models/synthetic_faces_sd")
    assert pipeline.unet.config.block_out_channels == [8, 16]


# ---------------------------------------------------------------------------------------------------- resume


def resumable_fit(method: str, root: Path, faces_root: Path, vae: Path, crash_at: int | None = None) -> object:
    module = tiny_vae_module(root / "model") if method == "vae" else tiny_unet_module(root / "model", vae)
    checkpoint = ModelCheckpoint(filename="last", every_n_train_steps=3, enable_version_counter=False)
    callbacks = [checkpoint] + ([Crash(crash_at)] if crash_at else [])
    resume = root / "checkpoints" / "last.ckpt"
    fit = trainer(root, callbacks=callbacks, max_epochs=2, limit_train_batches=4)
    fit.fit(module, datamodule(faces_root), ckpt_path=resume if resume.is_file() and not crash_at else None)
    return module


@pytest.mark.slow  # 2 to 4 s with OMP_NUM_THREADS=1; 25 to 40 s with torch's 2 threads on a busy 2-core machine
@pytest.mark.parametrize("method", ["vae", "unet"])
def test_a_crashed_fit_resumes_to_the_uninterrupted_weights(
    method: str, faces_root: Path, tiny_vae: Path, tmp_path: Path
) -> None:
    """Crash after step 5, resume from the checkpoint of step 3: weights, EMA and optimizer as uninterrupted."""
    expected = resumable_fit(method, tmp_path / "uninterrupted", faces_root, tiny_vae)
    with pytest.raises(RuntimeError, match="crash"):
        resumable_fit(method, tmp_path / "run", faces_root, tiny_vae, crash_at=5)
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    resumed = resumable_fit(method, tmp_path / "run", faces_root, tiny_vae)
    assert resumed.trainer.global_step == expected.trainer.global_step == 8
    assert int(resumed.ema.n_averaged) == 8
    torch.testing.assert_close(resumed.state_dict(), expected.state_dict(), rtol=0, atol=0)
    [ours], [theirs] = resumed.trainer.optimizers, expected.trainer.optimizers
    torch.testing.assert_close(ours.state_dict()["state"], theirs.state_dict()["state"], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ shipped model


def test_shipped_model_folder_is_a_complete_stable_diffusion_pipeline() -> None:
    """The committed folder loads offline, with the record, the tokenizer and the size its card states (no sampling)."""
    folder = resolve_model_path("synthetic_faces_sd", "text-to-image model")
    assert sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) < 20e6
    record = json.loads((folder / "lightning_fair.json").read_text())
    conditioning = {"kind": "text", "neutral_prompt": "a photo of a person"}
    assert record == {"conditioning": conditioning, "image_size": 32, "center_crop_fraction": 1.0}
    pipeline = StableDiffusionPipeline.from_pretrained(folder)
    assert pipeline.unet.config.sample_size * pipeline.vae_scale_factor == 32
    assert pipeline.unet.config.cross_attention_dim == pipeline.text_encoder.config.hidden_size == 64
    for word in caption_words():
        assert len(pipeline.tokenizer(word, add_special_tokens=False).input_ids) == 1, word
