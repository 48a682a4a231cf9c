"""A pixel-space diffusers ``UNet2DModel``: unconditional, or class-conditional with a null label."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor, nn

from lightning_fair.backbones.base import Condition, DiffusionBackbone
from lightning_fair.backbones.record import read_record

PIXEL_LAYOUT = (
    "a diffusers UNet2DModel folder (config.json and diffusion_pytorch_model.safetensors) or a pipeline folder "
    "with one in unet/"
)


class PixelBackbone(DiffusionBackbone):
    """A pretrained ``UNet2DModel`` that denoises images directly.

    ``lightning_fair.json`` beside the model (written by ``DiffusionPretraining``) names its conditioning attribute
    and null label and the view of its training images; a class-conditional model without it takes labels
    ``0..num_class_embeds - 2`` and the last one as the null label.

    Args:
        reference: how the model was named (stored in checkpoints).
        folder: the resolved local folder (a pipeline folder with ``unet/`` and ``scheduler/``, or a bare UNet).
    """

    def __init__(self, reference: str, folder: Path) -> None:
        super().__init__(reference)
        unet_folder = folder / "unet" if (folder / "unet").is_dir() else folder
        try:
            self.unet = UNet2DModel.from_pretrained(unet_folder, low_cpu_mem_usage=False)
        except Exception as error:  # a damaged weights file: the library's message may suggest unsafe loading
            raise ValueError(
                f"Option 'backbone': the UNet2DModel in '{unet_folder}' cannot be loaded ({type(error).__name__}); "
                "its weights file is damaged or does not fit its config.json"
            ) from None
        config = self.unet.config
        if config.class_embed_type is not None:
            raise ValueError(
                f"Option 'backbone': '{unet_folder}' has class_embed_type {config.class_embed_type!r}; only "
                "unconditional models and class labels through num_class_embeds are supported"
            )
        scheduler_folder = folder / "scheduler"
        self.scheduler_config = dict(
            DDPMScheduler.load_config(scheduler_folder) if scheduler_folder.is_dir() else DDPMScheduler().config
        )
        record = read_record(folder)
        self.center_crop_fraction = record.get("center_crop_fraction")
        conditioning = record.get("conditioning")
        if config.num_class_embeds is not None and conditioning is None:
            conditioning = {"attribute": None, "num_classes": config.num_class_embeds - 1, "null_label": None}
        self.conditioning = "class" if conditioning else "none"
        self.condition_attribute: str | None = conditioning["attribute"] if conditioning else None
        self.num_classes: int | None = conditioning["num_classes"] if conditioning else None
        self.null_label: int | None = conditioning["null_label"] if conditioning else None
        self._finish_setup()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Same as :attr:`sample_shape`."""
        return self.sample_shape

    def null_condition(self, batch_size: int, device: torch.device | str) -> Condition:
        """The null label of a class-conditional model, ``None`` for an unconditional one."""
        if self.conditioning == "none":
            return None
        if self.null_label is None:
            raise ValueError(f"This needs a backbone trained with a null label; '{self.reference}' has none")
        return torch.full((batch_size,), self.null_label, dtype=torch.long, device=device)

    def class_condition(self, labels: Tensor) -> Condition:
        """The labels themselves, checked against the model's classes."""
        if self.conditioning != "class":
            return super().class_condition(labels)
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"Class labels must lie in 0..{self.num_classes - 1} for '{self.reference}'")
        return labels.long()

    def _unet_output(
        self,
        x: Tensor,
        t: Tensor,
        condition: Condition,
        down_residuals: tuple[Tensor, ...] | None,
        unet: nn.Module | None = None,
    ) -> Tensor:
        unet = self.unet if unet is None else unet
        if down_residuals is not None:
            raise ValueError(f"'{self.reference}' is a UNet2DModel, which takes no down-block residuals")
        if self.conditioning == "class" and condition is None:
            raise ValueError(f"'{self.reference}' is class-conditional: pass class labels (null: {self.null_label})")
        if self.conditioning == "none" and condition is not None:
            raise ValueError(f"'{self.reference}' is unconditional but a condition was given")
        return unet(x, t, class_labels=condition).sample
