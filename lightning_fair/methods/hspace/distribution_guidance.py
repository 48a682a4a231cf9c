"""Distribution Guidance ("Balancing Act", Parihar et al., CVPR 2024): a batch's attribute distribution to a target."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_fair.diffusion import SamplerConfig, SamplingState
from lightning_fair.methods.conditions import Prompts
from lightning_fair.methods.hspace.guidance import OFFICIAL_SAMPLER, HSpaceGuidance
from lightning_fair.utils.distributed import sum_over_processes


class DistributionGuidance(HSpaceGuidance):
    """Pulls the batch's predicted attribute distribution to a target (Parihar et al., CVPR 2024).

    At each guided step the batch's distribution ``p_hat = mean_i softmax(ADP_t(h_i) / T)`` is compared with the
    target by ``loss`` (``chi2``: ``sum_k (p_hat_k - p_k)^2 / p_k``, the official default; or ``kl``:
    ``KL(p_hat || p)``); h moves down the gradient of the losses weighted by each attribute's scale (see
    :class:`HSpaceGuidance`).

    ``p_hat`` is taken over the **global** batch of all processes: the other processes' sums enter as constants,
    so each process gets the exact gradient for its own samples, and 2 processes with B/2 samples each get the
    same guidance as 1 process with B (the official code estimates it per GPU). The strength depends on the
    global batch size (``guidance_scale`` 15 is the official value for a batch of 100).

    Args:
        loss: ``chi2`` or ``kl``.
        **others: see :class:`HSpaceGuidance`.
    """

    name = "distribution_guidance"

    def __init__(
        self,
        backbone: str,
        classifier: str,
        target_distributions: dict[str, list[float]],
        sampler: SamplerConfig = OFFICIAL_SAMPLER,
        seed: int = 0,
        prompts: Prompts | None = None,
        loss: Literal["chi2", "kl"] = "chi2",
        head: Literal["linear", "mlp"] = "linear",
        hidden_features: int = 256,
        temperature: float = 8.0,
        h_source: Literal["noised", "inversion"] = "noised",
        guidance_scale: float | dict[str, float] | None = 15.0,
        loss_weight: float = 300.0,
        step_size: float = 1.5,
        beta_exponent: float = 0.05,
        first_guided_step: int = 1,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        calibration_scales: list[float] | None = None,
        calibration_samples: int = 256,
        calibration_batch_size: int | None = None,
    ) -> None:
        if loss not in ("chi2", "kl"):
            raise ValueError(f"Option 'loss' must be 'chi2' or 'kl', got {loss!r}")
        self.loss = loss
        super().__init__(
            backbone=backbone,
            classifier=classifier,
            target_distributions=target_distributions,
            sampler=sampler,
            seed=seed,
            prompts=prompts,
            head=head,
            hidden_features=hidden_features,
            temperature=temperature,
            h_source=h_source,
            guidance_scale=guidance_scale,
            loss_weight=loss_weight,
            step_size=step_size,
            beta_exponent=beta_exponent,
            first_guided_step=first_guided_step,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            calibration_scales=calibration_scales,
            calibration_samples=calibration_samples,
            calibration_batch_size=calibration_batch_size,
        )
        for name, target in self.targets.items():
            if (target <= 0).any():
                raise ValueError(
                    f"'target_distributions.{name}' must be positive for the {loss} loss, got {target.tolist()}"
                )

    def global_distributions(self, probabilities: dict[str, Tensor]) -> dict[str, Tensor]:
        """``p_hat`` of each attribute over the global batch, differentiable in this process's probabilities."""
        local = [p.sum(dim=0) for p in probabilities.values()]
        batch = next(iter(probabilities.values())).new_tensor([len(next(iter(probabilities.values())))])
        local_total = torch.cat([*(part.detach() for part in local), batch])
        others = sum_over_processes(local_total) - local_total
        sizes = [len(part) for part in local]
        count = batch + others[-1]
        offsets = others[:-1].split(sizes)
        return {name: (part + offset) / count for name, part, offset in zip(probabilities, local, offsets, strict=True)}

    def guidance_losses(self, h: Tensor, t: Tensor, state: SamplingState) -> dict[str, Tensor]:
        """Chi-square (or KL) distance of the global batch's predicted distribution to the target, per attribute."""
        losses = {}
        for name, p_hat in self.global_distributions(self.probabilities(h, t)).items():
            target = self.targets[name].to(h.device)
            if self.loss == "chi2":
                losses[name] = ((p_hat - target) ** 2 / target).sum()
            else:
                losses[name] = (p_hat * (p_hat.clamp(min=1e-12) / target).log()).sum()
        return losses

    def join_empty_batch(self) -> None:
        """Takes part in each guided step's sum over processes with an empty share."""
        width = sum(len(target) for target in self.targets.values()) + 1
        for _ in range(self.guided_steps()):
            sum_over_processes(torch.zeros(width, device=self.device))
