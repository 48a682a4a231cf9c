"""A latent text-to-image backbone over a local diffusers ``StableDiffusionPipeline`` folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_fair.backbones.base import Condition, DiffusionBackbone
from lightning_fair.backbones.record import read_record

LATENT_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
LATENT_LAYOUT = (
    "a StableDiffusionPipeline folder (model_index.json and unet/, vae/, text_encoder/, tokenizer/, scheduler/, "
    "as written by StableDiffusionPipeline.save_pretrained)"
)


class LatentTextToImageBackbone(DiffusionBackbone):
    """Stable Diffusion's parts: a ``UNet2DConditionModel`` denoising ``AutoencoderKL`` latents, text-conditioned.

    The UNet reads ``CLIPTextModel`` embeddings of prompts tokenised by ``CLIPTokenizer``.
    The same code loads a real SD 1.x / 2.x folder and the shipped ``synthetic_faces_sd``. Prompts are encoded once
    per batch (each distinct prompt once); the empty prompt is the null condition of classifier-free guidance; a
    prompt longer than the tokenizer's limit is truncated with a warning. UNet, VAE and text encoder compute in half
    precision on a GPU (``precision="auto"``) and in float32 on the CPU; the sampler's own arithmetic is float32. The
    neutral prompt recorded in ``lightning_fair.json`` (if any) is the default condition of unguided sampling.

    Args:
        reference: how the model was named (stored in checkpoints).
        folder: the resolved pipeline folder.
        precision: ``auto`` (float16 on a GPU, float32 elsewhere) or ``float32``.
    """

    conditioning = "text"
    components: tuple[str, ...] = LATENT_COMPONENTS
    layout: str = LATENT_LAYOUT

    def __init__(self, reference: str, folder: Path, precision: str = "auto") -> None:
        super().__init__(reference)
        missing = [name for name in self.components if not (folder / name).is_dir()]
        if missing:
            raise ValueError(
                f"Option 'backbone': '{folder}' has no {', '.join(f'{name}/' for name in missing)}; expected "
                f"{self.layout}"
            )

        def load(name: str, loader: type, **options: object) -> object:
            try:
                return loader.from_pretrained(folder / name, **options)
            except Exception as error:  # a damaged file: the library's message may suggest unsafe loading
                raise ValueError(
                    f"Option 'backbone': the {name}/ component of '{folder}' cannot be loaded as {loader.__name__} "
                    f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
                ) from None

        self.unet = load("unet", UNet2DConditionModel, low_cpu_mem_usage=False)
        self.vae = load("vae", AutoencoderKL, low_cpu_mem_usage=False)
        self._load_text_encoders(load)
        self.scheduler_config = dict(DDPMScheduler.load_config(folder / "scheduler"))
        record = read_record(folder)
        self.center_crop_fraction = record.get("center_crop_fraction")
        self.neutral_prompt: str | None = (record.get("conditioning") or {}).get("neutral_prompt")
        if precision not in ("auto", "float32"):
            raise ValueError(f"Option 'precision' must be 'auto' or 'float32', got {precision!r}")
        self.precision = precision
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self._warned_prompts: set[str] = set()
        self._finish_setup()

    def _load_text_encoders(self, load: Callable[[str, type], Any]) -> None:
        """The text encoder and tokenizer (``load(component, class)`` reads a component folder)."""
        from transformers import CLIPTextModel, CLIPTokenizer

        self.text_encoder = load("text_encoder", CLIPTextModel)
        self.tokenizer = load("tokenizer", CLIPTokenizer)

    @property
    def text_encoders(self) -> list[nn.Module]:
        """The text encoders (moved to the UNet's precision with it)."""
        return [self.text_encoder]

    @property
    def is_latent(self) -> bool:
        """Always: the UNet denoises VAE latents."""
        return True

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(3, H, W)`` of the decoded images."""
        _, height, width = self.sample_shape
        return self.vae.config.out_channels, height * self.vae_scale_factor, width * self.vae_scale_factor

    def use_precision_for(self, device: torch.device) -> None:
        """Half precision on a GPU (``precision="auto"``), as Stable Diffusion is run; float32 elsewhere."""
        half = self.precision == "auto" and torch.device(device).type == "cuda"
        dtype = torch.float16 if half else torch.float32
        if self.dtype != dtype:
            for module in (self.unet, self.vae, *self.text_encoders):
                module.to(dtype)

    # ---------------------------------------------------------------------------------------------- images

    def decode(self, x: Tensor) -> Tensor:
        """Images in [-1, 1] from latents (the VAE decoder, after undoing its scaling factor)."""
        latents = x.to(self.vae.dtype) / self.vae.config.scaling_factor
        return self.vae.decode(latents).sample.to(x.dtype).clamp(-1, 1)

    def encode(self, images: Tensor) -> Tensor:
        """Scaled latents of images in [-1, 1] (the mean of the VAE's posterior)."""
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return (posterior.mean * self.vae.config.scaling_factor).to(images.dtype)

    # ------------------------------------------------------------------------------------------ conditions

    def tokens(self, texts: list[str], tokenizer: Any = None) -> Any:
        """``texts`` tokenised to the tokenizer's full length (padded, truncated), as tensors."""
        tokenizer = tokenizer or self.tokenizer
        return tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )

    def token_embeddings(self, texts: list[str]) -> Tensor:
        """``(N, L, D)``: the per-token embeddings the UNet's cross-attention reads for ``texts``."""
        return self.text_encoder(self.tokens(texts).input_ids.to(self.text_encoder.device))[0]

    def encode_prompts(self, texts: list[str]) -> Tensor:
        """The condition of each of ``texts`` (the token embeddings here; a subclass may add to them)."""
        return self.token_embeddings(texts)

    def prompt_condition(self, prompts: list[str]) -> Condition:
        """The condition ``(B, L, D)`` of ``prompts`` (:meth:`encode_prompts`), each distinct prompt encoded once."""
        device = self.text_encoder.device
        distinct = sorted(set(prompts))
        self._warn_truncated(distinct)
        embeddings = self.encode_prompts(distinct)
        position = {prompt: row for row, prompt in enumerate(distinct)}
        rows = torch.tensor([position[prompt] for prompt in prompts], dtype=torch.long, device=device)
        return embeddings[rows]

    def last_word_embeddings(self, texts: list[str]) -> Tensor:
        """``(N, D)``: each text's text-encoder embedding at its last word token (the one before the end token).

        It is the embedding the UNet's cross-attention reads for the word in that context (the text encoder is
        causal), as Unified Concept Editing takes its keys.
        """
        embeddings = self.token_embeddings(texts)
        last = (self.tokens(texts).attention_mask.sum(dim=1) - 2).clamp(min=0).to(embeddings.device)
        return embeddings[torch.arange(len(texts), device=embeddings.device), last]

    def null_condition(self, batch_size: int, device: torch.device | str) -> Condition:
        """Embeddings of the empty prompt."""
        return self.prompt_condition([""] * batch_size).to(device)

    def _warn_truncated(self, prompts: list[str]) -> None:
        limit = self.tokenizer.model_max_length
        for prompt in prompts:
            length = len(self.tokenizer(prompt).input_ids)
            if length > limit and prompt not in self._warned_prompts:
                self._warned_prompts.add(prompt)
                rank_zero_warn(
                    f"The prompt {prompt!r} has {length} tokens; the text encoder of '{self.reference}' reads "
                    f"{limit}: it is truncated"
                )

    # -------------------------------------------------------------------------------------------- the call

    def _unet_output(
        self,
        x: Tensor,
        t: Tensor,
        condition: Condition,
        down_residuals: tuple[Tensor, ...] | None,
        unet: nn.Module | None = None,
    ) -> Tensor:
        unet = self.unet if unet is None else unet
        if condition is None:
            raise ValueError(f"'{self.reference}' is text-conditional: pass prompt embeddings")
        options = self.condition_inputs(condition.to(x.dtype), x)
        if down_residuals is not None:  # diffusers adds them only together with a mid residual (0 here: the
            # mid residual of AdapterInputs goes through the mid-block hook)
            options |= {
                "down_block_additional_residuals": tuple(r.to(x.dtype) for r in down_residuals),
                "mid_block_additional_residual": torch.zeros((), dtype=x.dtype, device=x.device),
            }
        return unet(x, t, **options).sample

    def condition_inputs(self, condition: Tensor, x: Tensor) -> dict[str, Any]:
        """The UNet's keyword inputs of a condition (here its token embeddings) for a batch ``x``."""
        return {"encoder_hidden_states": condition}
