"""Checkpoint hygiene: frozen weights never in a checkpoint, the method's record, and a fit that fits the options."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class CheckpointHygiene:
    """The checkpoint hooks of a :class:`~lightning_fair.methods.base.DebiasingMethod`.

    A checkpoint holds the trainable modules only (an adapter trained inside a frozen module, e.g. LoRA, included)
    and a ``lightning_fair`` record of the method and the backbone reference; the frozen modules (``frozen_names``)
    are put back from their references when it is restored. A checkpoint of another method, or whose trainable
    modules differ from the configured ones, is refused with the options that differ.
    """

    frozen_names: list[str]
    backbone_reference: str

    def _frozen_keys(self, keys: Iterable[str]) -> set[str]:
        """The state keys of frozen modules' own weights (an adapter trained inside one, e.g. LoRA, is not one)."""
        prefixes = tuple(f"{name}." for name in self.frozen_names)
        trainable = {name for name, parameter in self.named_parameters() if parameter.requires_grad}
        return {key for key in keys if key.startswith(prefixes) and key not in trainable}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drops the frozen modules' weights; records the method and the backbone reference."""
        state = checkpoint["state_dict"]
        frozen = self._frozen_keys(state)
        checkpoint["state_dict"] = {key: value for key, value in state.items() if key not in frozen}
        checkpoint["lightning_fair"] = {"method": type(self).__name__, "backbone": self.backbone_reference}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuses another method's checkpoint or other modules; puts back the frozen modules from their references."""
        saved = checkpoint.get("lightning_fair", {}).get("method")
        if saved != type(self).__name__:
            writer = f"by {saved}" if saved else "by no debiasing method (it has no 'lightning_fair' record)"
            raise ValueError(f"{self._checkpoint_name()} was written {writer}, not by {type(self).__name__}")
        self._check_modules_fit(checkpoint)
        own_state = {
            f"{name}.{key}": value
            for name in self.frozen_names
            for key, value in getattr(self, name).state_dict().items()
        }
        frozen = self._frozen_keys(own_state)
        frozen_state = {key: value for key, value in own_state.items() if key in frozen}
        checkpoint["state_dict"] = {**checkpoint["state_dict"], **frozen_state}

    def _checkpoint_name(self) -> str:
        path = self._trainer.ckpt_path if self._trainer is not None else None
        return f"The checkpoint '{path}'" if path else "The checkpoint"

    def _check_modules_fit(self, checkpoint: dict[str, Any]) -> None:
        """Refuses a checkpoint whose trainable modules differ from the configured ones, naming differing options."""
        state = self.state_dict()
        frozen = self._frozen_keys(state)
        configured = {key: value.shape for key, value in state.items() if key not in frozen}
        stored = {key: value.shape for key, value in checkpoint["state_dict"].items()}
        if stored == configured:
            return
        saved, current = _flatten(checkpoint.get("hyper_parameters", {})), _flatten(dict(self.hparams))
        differences = [
            f"model.init_args.{key} is {saved.get(key)!r} in the checkpoint and {current.get(key)!r} here"
            for key in sorted(saved.keys() | current.keys())
            if saved.get(key) != current.get(key) and not key.startswith("_")  # "_class_path": the CLI's own
        ]
        if not differences:
            unlike = sorted(key for key in stored.keys() | configured.keys() if stored.get(key) != configured.get(key))
            differences = [
                f"its {unlike[0]} is {stored.get(unlike[0])} and the configured one {configured.get(unlike[0])}"
            ]
        raise ValueError(
            f"{self._checkpoint_name()} does not fit this {type(self).__name__}: {'; '.join(differences)}. Set the "
            "options back to the checkpoint's values to use it, or run `fit` again with the new ones"
        )


def _flatten(options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested options as one level of dotted keys, e.g. ``{"sampler.num_inference_steps": 25}``."""
    flat: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
