"""``load_backbone``: the implementation of the contract that fits a model folder, read from its own config files."""

from __future__ import annotations

from lightning_fair.backbones.base import DiffusionBackbone
from lightning_fair.backbones.latent import LATENT_LAYOUT, LatentTextToImageBackbone
from lightning_fair.backbones.latent_xl import XL_LAYOUT, LatentXLBackbone
from lightning_fair.backbones.pixel import PIXEL_LAYOUT, PixelBackbone
from lightning_fair.models import describe_model, has_diffusers_model, read_json, resolve_model_path

LATENT_PIPELINES = ("StableDiffusionPipeline",)


def load_backbone(reference: str) -> DiffusionBackbone:
    """Loads the frozen backbone named by ``reference`` (a local folder or a shipped model name).

    A folder whose ``model_index.json`` names a ``StableDiffusionXLPipeline`` (or whose UNet takes SDXL's
    ``text_time`` added conditioning) is an SDXL model; one that names a ``StableDiffusionPipeline`` (or whose
    ``unet/`` holds a ``UNet2DConditionModel``) a latent text-to-image model; a ``UNet2DModel`` folder, bare or in
    ``unet/``, is a pixel model. Nothing is downloaded.
    """
    folder = resolve_model_path(reference, "diffusion backbone")
    pipeline = (read_json(folder / "model_index.json") or {}).get("_class_name")
    unet_config = read_json(folder / "unet" / "config.json") or {}
    if pipeline == "StableDiffusionXLPipeline" or unet_config.get("addition_embed_type") == "text_time":
        return LatentXLBackbone(reference, folder)
    if pipeline in LATENT_PIPELINES or unet_config.get("_class_name") == "UNet2DConditionModel":
        return LatentTextToImageBackbone(reference, folder)
    unet_folder = folder / "unet" if (folder / "unet").is_dir() else folder
    if has_diffusers_model(unet_folder, "UNet2DModel"):
        return PixelBackbone(reference, folder)
    raise ValueError(
        f"Option 'backbone': '{unet_folder}' is {describe_model(unet_folder)}; expected {PIXEL_LAYOUT}, or "
        f"{LATENT_LAYOUT}, or {XL_LAYOUT}"
    )
