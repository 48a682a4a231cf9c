"""Training a Stable-Diffusion-style text-to-image model from scratch on captions of the images' attributes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel

from lightning_fair.data.captions import CaptionWriter, caption_words
from lightning_fair.data.vocabulary import build_tokenizer, write_tokenizer
from lightning_fair.diffusion.schedulers import sampling_scheduler, training_scheduler
from lightning_fair.diffusion.seeding import NOISE_STREAM, per_sample_randn, sample_generators, training_generators
from lightning_fair.models import CONDITIONING_FILE, resolve_model_path
from lightning_fair.pretraining.ema import EMAPretraining, check_group_norm
from lightning_fair.pretraining.vae import encode, unaugmented

VAE_RECIPE = (
    "train one with `lightning-fair fit -c configs/setups/synthetic_faces_sd.yaml "
    "-c configs/training/pretrain_vae.yaml`"
)
# Stable Diffusion 1.x's noise schedule; sampling uses DDIM with its settings.
NOISE_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


class LatentDiffusionPretraining(EMAPretraining):
    """Trains a text-conditional ``UNet2DConditionModel`` on the latents of a frozen VAE, as Stable Diffusion.

    Captions are written from each image's attributes by :class:`~lightning_fair.data.captions.CaptionWriter`
    (gender word replaced by ``person``, phrases dropped, empty captions as the null condition of classifier-free
    guidance) and tokenized by a CLIP tokenizer that holds every caption word as one token. The text encoder, a tiny
    ``CLIPTextModel``, is trained from scratch with the UNet (as LDM's), or kept at its random initial weights.

    The latents (posterior means, times the VAE's ``scaling_factor``) of every training image and of its mirror image
    are computed once, at the start of ``fit``, and read by image index: the DataModule's own flips are not used; each
    image is mirrored with probability 1/2 when ``mirror_images`` is set. The caption, mirroring, timestep and noise
    of each image depend only on ``(seed, epoch, image index)``, so a fit resumed with ``--ckpt_path`` ends as an
    uninterrupted one. EMA weights of UNet and text encoder with warm-up, as
    :class:`~lightning_fair.pretraining.DiffusionPretraining`.

    At the end of ``fit`` the weights of lower validation loss (EMA or raw) are written into ``output_dir`` with
    ``StableDiffusionPipeline``'s ``save_pretrained`` (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, a
    DDIM ``scheduler/`` with Stable Diffusion 1.x's settings, ``model_index.json``; no safety checker), plus
    ``lightning_fair.json``: the text conditioning with its neutral prompt, the image size and the view of the
    training images.

    Args:
        output_dir: folder the pipeline is written to (replaced atomically).
        vae: the trained ``AutoencoderKL`` (a folder, a pipeline folder with ``vae/``, or a shipped model's name).
        attributes: the DataModule's attribute names (order of the batch's ``attributes`` columns).
        image_size: side of the square training images.
        neutral_prompt: the prompt that names no attribute, recorded for the methods that sample the model.
        person_probability: probability of writing ``person`` in place of ``man`` or ``woman`` in a caption.
        phrase_dropout: probability of leaving out each attribute phrase of a caption.
        caption_dropout: probability of the empty caption (the null condition).
        mirror_images: mirror each training image with probability 1/2 (its cached mirrored latents).
        block_out_channels: UNet channels of each resolution level (every level has cross-attention, and so has
            the mid block, whose output is the h-space).
        layers_per_block: UNet ResNet layers per level.
        attention_head_dim: UNet attention heads (diffusers' name for it).
        norm_num_groups: UNet group-norm groups (must divide every channel count).
        text_hidden_size: width of the text encoder (the UNet's cross-attention dimension).
        text_layers: transformer layers of the text encoder.
        text_heads: attention heads of the text encoder.
        text_intermediate_size: width of the text encoder's feed-forward layers.
        max_prompt_length: tokens of a prompt, start and end tokens included (longer prompts are truncated).
        train_text_encoder: train the text encoder with the UNet; otherwise keep its random initial weights.
        learning_rate: AdamW learning rate after warm-up.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up steps.
        ema_decay: largest decay of the exponential moving average of the weights.
        ema_inv_gamma: warm-up of the EMA decay: the step scale of its growth.
        ema_power: warm-up of the EMA decay: the exponent of its growth.
        encode_batch_size: images per VAE forward pass when the latents are computed.
        seed: seed of the captions, mirroring, noise and timesteps drawn for each image.
    """

    def __init__(
        self,
        output_dir: str,
        vae: str,
        attributes: list[str],
        image_size: int = 32,
        neutral_prompt: str = "a photo of a person",
        person_probability: float = 0.5,
        phrase_dropout: float = 0.5,
        caption_dropout: float = 0.1,
        mirror_images: bool = True,
        block_out_channels: tuple[int, ...] = (64, 112),
        layers_per_block: int = 1,
        attention_head_dim: int = 8,
        norm_num_groups: int = 16,
        text_hidden_size: int = 64,
        text_layers: int = 2,
        text_heads: int = 4,
        text_intermediate_size: int = 256,
        max_prompt_length: int = 32,
        train_text_encoder: bool = True,
        learning_rate: float = 5e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        ema_decay: float = 0.999,
        ema_inv_gamma: float = 1.0,
        ema_power: float = 0.75,
        encode_batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        check_group_norm(norm_num_groups, block_out_channels)
        if text_hidden_size % text_heads:
            raise ValueError(f"Option 'text_heads' ({text_heads}) must divide 'text_hidden_size' ({text_hidden_size})")
        unknown = [word for word in neutral_prompt.split() if word not in caption_words()]
        if unknown:
            raise ValueError(f"Option 'neutral_prompt' ({neutral_prompt!r}) has words no caption holds: {unknown}")
        super().__init__(
            output_dir, image_size, learning_rate, weight_decay, warmup_steps, ema_decay, ema_inv_gamma, ema_power, seed
        )
        self.captions = CaptionWriter(attributes, person_probability, phrase_dropout, caption_dropout)
        self.save_hyperparameters()
        self.neutral_prompt = neutral_prompt
        self.mirror_images = mirror_images
        self.max_prompt_length = max_prompt_length
        self.encode_batch_size = encode_batch_size
        self.vae = load_vae(vae).requires_grad_(False)
        if image_size % self.vae_scale:
            raise ValueError(
                f"Option 'image_size' ({image_size}) must be a multiple of the VAE's downsampling ({self.vae_scale})"
            )
        self.tokenizer = build_tokenizer(caption_words(), max_prompt_length)
        levels = len(block_out_channels)
        unet = UNet2DConditionModel(
            sample_size=image_size // self.vae_scale,
            in_channels=self.vae.config.latent_channels,
            out_channels=self.vae.config.latent_channels,
            layers_per_block=layers_per_block,
            block_out_channels=tuple(block_out_channels),
            down_block_types=("CrossAttnDownBlock2D",) * levels,
            up_block_types=("CrossAttnUpBlock2D",) * levels,
            cross_attention_dim=text_hidden_size,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
        )
        text_config = CLIPTextConfig(
            vocab_size=len(self.tokenizer),
            hidden_size=text_hidden_size,
            intermediate_size=text_intermediate_size,
            num_hidden_layers=text_layers,
            num_attention_heads=text_heads,
            max_position_embeddings=max_prompt_length,
            bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        text_encoder = CLIPTextModel(text_config).requires_grad_(train_text_encoder)
        self.denoiser = nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
        self.average()
        self.scheduler = training_scheduler(**NOISE_SCHEDULE)
        self.latents: Tensor | None = None  # (images, unmirrored/mirrored, C, h, w), from setup
        self.latent_rows: Tensor | None = None  # position in `latents` of each table row

    @property
    def vae_scale(self) -> int:
        """How many times smaller the latents are than the images."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def trained(self) -> nn.Module:
        """The UNet and the text encoder."""
        return self.denoiser

    def setup(self, stage: str) -> None:
        """Checks the image size, then computes the latents of the training images and their mirror images."""
        super().setup(stage)
        if stage != "fit":
            return
        images = unaugmented(self.trainer.datamodule, "train")
        batch_size, scale = self.encode_batch_size, self.vae.config.scaling_factor
        views = [encode(self.vae, images, batch_size, mirrored) * scale for mirrored in (False, True)]
        self.latents = torch.stack(views, dim=1)
        self.latent_rows = torch.full((int(images.indices.max()) + 1,), -1, dtype=torch.long)
        self.latent_rows[images.indices] = torch.arange(len(images.indices))

    def tokenize(self, prompts: list[str]) -> Tensor:
        """Token ids of ``prompts``, padded to ``max_prompt_length`` (as ``StableDiffusionPipeline`` does)."""
        return self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)

    def diffusion_loss(
        self, model: nn.ModuleDict, latents: Tensor, captions: list[str], generators: list[torch.Generator]
    ) -> Tensor:
        """Mean squared error of the predicted noise at uniformly drawn timesteps, conditioned on ``captions``.

        Latent ``i`` draws its timestep and its noise from ``generators[i]``.
        """
        steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.cat([torch.randint(0, steps, (1,), generator=g) for g in generators]).to(latents.device)
        noise = per_sample_randn(generators, tuple(latents.shape[1:]), latents.device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        text = model["text_encoder"](self.tokenize(captions))[0]
        prediction = model["unet"](noisy, timesteps, encoder_hidden_states=text).sample
        return F.mse_loss(prediction, noise)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Loss on the cached latents; caption, mirroring, timestep and noise drawn from ``(seed, epoch, index)``."""
        if self.latents is None:
            raise RuntimeError("The latents of the training images are computed in setup('fit'), which has not run")
        generators = training_generators(self.seed, self.current_epoch, batch["index"])
        captions = self.captions(batch["attributes"], generators)
        mirrored = torch.cat([torch.rand(1, generator=generator) < 0.5 for generator in generators])
        mirrored &= bool(self.mirror_images)
        rows = self.latent_rows[batch["index"].cpu()]
        latents = self.latents[rows, mirrored.long()].to(self.device)
        loss = self.diffusion_loss(self.denoiser, latents, captions, generators)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_losses(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Diffusion loss of ``model`` on the batch's latents, captions and draws seeded by ``(seed, image index)``."""
        with torch.no_grad():
            latents = self.vae.encode(batch["image"]).latent_dist.mean * self.vae.config.scaling_factor
        generators = sample_generators(self.seed, batch["index"], NOISE_STREAM)
        captions = self.captions(batch["attributes"], generators)
        return {"loss": self.diffusion_loss(model, latents, captions, generators)}

    def write(self, folder: Path, model: nn.Module) -> None:
        """Writes ``model`` (UNet and text encoder) with the VAE and the tokenizer as a Stable Diffusion folder."""
        pipeline = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=model["text_encoder"],
            tokenizer=self.tokenizer,
            unet=model["unet"],
            scheduler=sampling_scheduler(**NOISE_SCHEDULE),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipeline.save_pretrained(folder, safe_serialization=True)
        write_tokenizer(folder / "tokenizer", caption_words(), self.max_prompt_length)
        record = {
            "conditioning": {"kind": "text", "neutral_prompt": self.neutral_prompt},
            "image_size": self.image_size,
            "center_crop_fraction": self.training_view(),
        }
        (folder / CONDITIONING_FILE).write_text(json.dumps(record, indent=2) + "\n")


def load_vae(reference: str) -> AutoencoderKL:
    """The ``AutoencoderKL`` of a folder, of a pipeline folder's ``vae/`` or of a shipped model (option ``vae``)."""
    path = resolve_model_path(reference, "VAE for option 'vae'", VAE_RECIPE)
    folder = path / "vae" if (path / "vae").is_dir() else path
    if not (folder / "config.json").is_file():
        raise ValueError(f"Option 'vae': '{path}' holds no AutoencoderKL (config.json and weights); {VAE_RECIPE}")
    return AutoencoderKL.from_pretrained(folder)
