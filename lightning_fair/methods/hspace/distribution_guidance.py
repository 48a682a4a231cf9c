"""Distribution Guidance ("Balancing Act", Parihar et al., CVPR 2024): a batch's attribute distribution to a target."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lightning_fair.diffusion import SamplingState
from lightning_fair.methods.hspace.guidance import HSpaceGuidance
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
    batch_level = True

    def __init__(self, *args: Any, loss: Literal["chi2", "kl"] = "chi2", **others: Any) -> None:
        if loss not in ("chi2", "kl"):
            raise ValueError(f"Option 'loss' must be 'chi2' or 'kl', got {loss!r}")
        self.loss = loss
        super().__init__(*args, **others)
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
