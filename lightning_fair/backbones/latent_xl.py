"""SDXL as a latent text-to-image backbone: two text encoders, pooled embeddings and size conditioning."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_fair.backbones.base import Condition
from lightning_fair.backbones.latent import LatentTextToImageBackbone
from lightning_fair.models import read_json

XL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
XL_LAYOUT = (
    "a StableDiffusionXLPipeline folder (model_index.json and unet/, vae/, text_encoder/, text_encoder_2/, "
    "tokenizer/, tokenizer_2/, scheduler/, as written by StableDiffusionXLPipeline.save_pretrained)"
)


class LatentXLBackbone(LatentTextToImageBackbone):
    """Stable Diffusion XL's parts, loaded from a local ``StableDiffusionXLPipeline`` folder.

    A prompt is read by both text encoders: the UNet's cross-attention takes their penultimate hidden states side by
    side (``(L, D1 + D2)``), and its added conditioning the second encoder's pooled, projected embedding and the
    size/crop conditioning (original size and target size the images' own, crop ``(0, 0)``), as
    ``StableDiffusionXLPipeline`` builds them. A condition is one tensor ``(B, L + 1, D1 + D2)``: the token
    embeddings, then one row holding the pooled embedding (zero-padded), so that every method batches, repeats and
    indexes it as it does Stable Diffusion 1.x's. The null condition is zeros when the pipeline's
    ``force_zeros_for_empty_prompt`` is set (SDXL's own), else the empty prompt's. The h-space is the mid block's
    output.
    """

    components = XL_COMPONENTS
    layout = XL_LAYOUT

    def __init__(self, reference: str, folder: Path, precision: str = "auto") -> None:
        index = read_json(folder / "model_index.json") or {}
        self.zeros_for_empty_prompt = bool(index.get("force_zeros_for_empty_prompt", True))
        super().__init__(reference, folder, precision)

    def _load_text_encoders(self, load: Callable[[str, type], Any]) -> None:
        """Both text encoders (the second with its projection) and both tokenizers."""
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        self.text_encoder = load("text_encoder", CLIPTextModel)
        self.text_encoder_2 = load("text_encoder_2", CLIPTextModelWithProjection)
        self.tokenizer = load("tokenizer", CLIPTokenizer)
        self.tokenizer_2 = load("tokenizer_2", CLIPTokenizer)

    @property
    def text_encoders(self) -> list[nn.Module]:
        """Both text encoders."""
        return [self.text_encoder, self.text_encoder_2]

    def _encoded(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """The token embeddings ``(N, L, D1 + D2)`` and the pooled embeddings ``(N, P)`` of ``texts``."""
        first = self.text_encoder(self.tokens(texts).input_ids.to(self.text_encoder.device), output_hidden_states=True)
        second = self.text_encoder_2(
            self.tokens(texts, self.tokenizer_2).input_ids.to(self.text_encoder_2.device), output_hidden_states=True
        )
        return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1), second.text_embeds

    def token_embeddings(self, texts: list[str]) -> Tensor:
        """``(N, L, D1 + D2)``: both encoders' penultimate hidden states, side by side."""
        return self._encoded(texts)[0]

    def encode_prompts(self, texts: list[str]) -> Tensor:
        """The token embeddings with the pooled embedding as one more row (see the class docstring)."""
        tokens, pooled = self._encoded(texts)
        return self._pack(tokens, pooled)

    def _pack(self, tokens: Tensor, pooled: Tensor) -> Tensor:
        width = tokens.shape[-1]
        if pooled.shape[-1] > width:
            raise ValueError(
                f"'{self.reference}': the pooled text embedding ({pooled.shape[-1]}) is wider than the token "
                f"embeddings ({width}); this backbone packs it as one more token row"
            )
        row = torch.zeros(len(tokens), 1, width, dtype=tokens.dtype, device=tokens.device)
        row[:, 0, : pooled.shape[-1]] = pooled.to(tokens.dtype)
        return torch.cat([tokens, row], dim=1)

    def null_condition(self, batch_size: int, device: torch.device | str) -> Condition:
        """Zeros (``force_zeros_for_empty_prompt``), else the empty prompt's condition."""
        if not self.zeros_for_empty_prompt:
            return self.prompt_condition([""] * batch_size).to(device)
        length = self.tokenizer.model_max_length + 1
        width = self.text_encoder.config.hidden_size + self.text_encoder_2.config.hidden_size
        return torch.zeros(batch_size, length, width, dtype=self.text_encoder.dtype, device=device)

    def condition_inputs(self, condition: Tensor, x: Tensor) -> dict[str, Any]:
        """The token embeddings, and as added conditioning the pooled embedding and the sizes (see the class)."""
        pooled_width = self.text_encoder_2.config.projection_dim
        height, width = self.image_shape[1:]
        sizes = torch.tensor([height, width, 0, 0, height, width], dtype=x.dtype, device=x.device)
        added = {"text_embeds": condition[:, -1, :pooled_width], "time_ids": sizes.expand(len(x), 6)}
        return {"encoder_hidden_states": condition[:, :-1], "added_cond_kwargs": added}
