"""LoRA adapters (peft) on a frozen UNet's layers: more capacity for a condition than an embedding alone."""

from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def add_lora(unet: nn.Module, rank: int, target_modules: list[str]) -> None:
    """Adds rank-``rank`` LoRA adapters (``alpha = rank``, ``B`` zero: the UNet is unchanged) to the named layers.

    Only the adapters' weights train; the UNet's own stay frozen. A name matching no layer is a one-line error.
    """
    present = {name.rsplit(".", 1)[-1] for name, _ in unet.named_modules()} | {
        ".".join(name.split(".")[-2:]) for name, _ in unet.named_modules()
    }
    missing = [target for target in target_modules if target not in present]
    if missing:
        raise ValueError(
            f"Option 'lora_target_modules': {missing} name no layer of the backbone's UNet "
            f"(e.g. 'to_q', 'to_k', 'to_v', 'to_out.0' in attention blocks, 'conv1', 'conv2' in ResNet blocks)"
        )
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=target_modules, lora_dropout=0.0)
    inject_adapter_in_model(config, unet)
