"""A frozen diffusers ``UNet2DModel`` that exposes its h-space (the mid-block output)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor, nn

from lightning_fair.models import CONDITIONING_FILE, describe_model, has_diffusers_model, read_json, resolve_model_path

EXPECTED = (
    "a diffusers UNet2DModel folder (config.json and diffusion_pytorch_model.safetensors) or a pipeline folder "
    "with one in unet/"
)


@dataclass
class UNetEncoding:
    """The encoder half of one UNet call: h-space, skip connections and the time/class embedding."""

    h: Tensor
    skips: tuple[Tensor, ...]
    embedding: Tensor


class FrozenUNet(nn.Module):
    """A pretrained ``UNet2DModel`` loaded with ``from_pretrained``, frozen and always in eval mode.

    The call is split at the mid block: :meth:`encode` returns h (the mid-block output, the "h-space" of
    Asyrp and Distribution Guidance) together with the skip connections, and :meth:`decode` finishes the
    call from a possibly edited h, so h-space guidance costs one UNet call per step.

    ``lightning_fair.json`` beside the model (written by ``DiffusionPretraining``) records its conditioning and the
    view of the images it was trained on (``center_crop_fraction``: the side of the centred square crop of the
    source images, as a fraction of their shorter side); the view is unknown (``None``) without it.

    Args:
        path: a local diffusers folder (a pipeline folder with ``unet/`` and ``scheduler/``, or a bare UNet
            folder), or the name of a model shipped with the package.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        folder = resolve_model_path(path, "diffusion backbone")
        unet_folder = folder / "unet" if (folder / "unet").is_dir() else folder
        if not has_diffusers_model(unet_folder, "UNet2DModel"):
            what = describe_model(unet_folder)
            raise ValueError(f"Option 'backbone': '{unet_folder}' is {what}; expected {EXPECTED}")
        self.reference = path
        try:
            self.unet = UNet2DModel.from_pretrained(unet_folder, low_cpu_mem_usage=False)
        except Exception as error:  # a damaged weights file: the library's message may suggest unsafe loading
            raise ValueError(
                f"Option 'backbone': the UNet2DModel in '{unet_folder}' cannot be loaded ({type(error).__name__}); "
                "its weights file is damaged or does not fit its config.json"
            ) from None
        config = self.unet.config
        if config.time_embedding_type != "positional" or any(hasattr(b, "skip_conv") for b in self.unet.down_blocks):
            raise ValueError(f"'{folder}': only UNet2DModel with positional time embedding and no skip blocks")
        if config.class_embed_type is not None or config.center_input_sample:
            raise ValueError(f"'{folder}': class_embed_type and center_input_sample are not supported")
        scheduler_folder = folder / "scheduler"
        self.scheduler_config = (
            DDPMScheduler.load_config(scheduler_folder) if scheduler_folder.is_dir() else DDPMScheduler().config
        )
        record_file = folder / CONDITIONING_FILE
        record = read_json(record_file) if record_file.is_file() else {}
        if record is None:
            raise ValueError(f"Option 'backbone': '{record_file}' is not a JSON object")
        self.center_crop_fraction: float | None = record.get("center_crop_fraction")
        conditioning = record.get("conditioning")
        if config.num_class_embeds is not None and conditioning is None:
            conditioning = {"attribute": None, "num_classes": config.num_class_embeds - 1, "null_label": None}
        self.condition_attribute: str | None = conditioning["attribute"] if conditioning else None
        self.num_classes: int | None = conditioning["num_classes"] if conditioning else None
        self.null_label: int | None = conditioning["null_label"] if conditioning else None
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenUNet:
        """Stays in eval mode whatever is asked (a frozen backbone never updates norm statistics)."""
        return super().train(False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of the images the model generates."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return self.unet.config.in_channels, height, width

    @property
    def is_conditional(self) -> bool:
        """Whether the model takes class labels."""
        return self.num_classes is not None

    def require_conditioning(self, method: str, null_label: bool = False) -> None:
        """Raises a ``ValueError`` naming ``method`` if the backbone lacks the conditioning it needs."""
        if not self.is_conditional:
            raise ValueError(
                f"{method} needs a class-conditional backbone; '{self.reference}' is unconditional (no class embedding)"
            )
        if null_label and self.null_label is None:
            raise ValueError(f"{method} needs a backbone trained with a null label; '{self.reference}' has none")

    def default_labels(self, batch_size: int, device: torch.device) -> Tensor | None:
        """The null label for a conditional model (unconditional generation), ``None`` otherwise."""
        if not self.is_conditional:
            return None
        self.require_conditioning("Unconditional sampling", null_label=True)
        return torch.full((batch_size,), self.null_label, dtype=torch.long, device=device)

    def encode(self, x: Tensor, t: Tensor | int, class_labels: Tensor | None = None) -> UNetEncoding:
        """Runs the UNet up to and including the mid block."""
        unet = self.unet
        timesteps = torch.as_tensor(t, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        embedding = unet.time_embedding(unet.time_proj(timesteps).to(dtype=x.dtype))
        if unet.class_embedding is not None:
            if class_labels is None:
                raise ValueError(
                    f"'{self.reference}' is class-conditional: pass class labels (null label: {self.null_label})"
                )
            embedding = embedding + unet.class_embedding(class_labels).to(dtype=x.dtype)
        elif class_labels is not None:
            raise ValueError(f"'{self.reference}' is unconditional but class labels were given")
        hidden = unet.conv_in(x)
        skips: tuple[Tensor, ...] = (hidden,)
        for block in unet.down_blocks:
            hidden, residuals = block(hidden_states=hidden, temb=embedding)
            skips += residuals
        h = unet.mid_block(hidden, embedding) if unet.mid_block is not None else hidden
        return UNetEncoding(h=h, skips=skips, embedding=embedding)

    def decode(self, encoding: UNetEncoding, h: Tensor | None = None) -> Tensor:
        """Finishes the UNet call from ``encoding``, with ``h`` replacing its h-space tensor if given."""
        unet = self.unet
        hidden = encoding.h if h is None else h
        skips = encoding.skips
        for block in unet.up_blocks:
            residuals, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            hidden = block(hidden, residuals, encoding.embedding)
        return unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))

    def forward(self, x: Tensor, t: Tensor | int, class_labels: Tensor | None = None) -> Tensor:
        """Predicted noise eps for ``(x_t, t, class_labels)``."""
        return self.decode(self.encode(x, t, class_labels))

    def classifier_free_eps(self, x: Tensor, t: Tensor | int, class_labels: Tensor, guidance_scale: float) -> Tensor:
        """Classifier-free guidance ``eps_null + s (eps_cond - eps_null)`` in one batched UNet call.

        A scale of 1 is plain conditional sampling (one call on the batch, no null branch).
        """
        if guidance_scale == 1.0:
            return self(x, t, class_labels)
        self.require_conditioning("Classifier-free guidance", null_label=True)
        null = torch.full_like(class_labels, self.null_label)
        timesteps = torch.as_tensor(t, device=x.device)
        if timesteps.ndim > 0:
            timesteps = torch.cat([timesteps, timesteps])
        eps_conditional, eps_null = self(torch.cat([x, x]), timesteps, torch.cat([class_labels, null])).chunk(2)
        return eps_null + guidance_scale * (eps_conditional - eps_null)
