"""Deterministic chains over a frozen model: DDIM inversion and paired DDIM chains from one starting noise."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

EpsOfStep = Callable[[Tensor, Tensor], Tensor]  # (x_t, t) -> predicted noise


def ddim_inversion(eps_of: EpsOfStep, x0: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> list[Tensor]:
    """Deterministic DDIM inversion: ``x_t`` at each of ``timesteps`` (ascending), starting from ``x0`` at the first.

    ``eps_of(x_t, t)`` is called once at every timestep (the last one included, so that a caller reading h through
    it sees every step); ``x_{t'} = sqrt(a_{t'}) x0_hat + sqrt(1 - a_{t'}) eps`` moves to the next timestep.
    """
    alphas = alphas_cumprod.to(x0.device, x0.dtype)
    states, x = [], x0
    for position, t in enumerate(timesteps):
        states.append(x)
        eps = eps_of(x, t)
        if position + 1 < len(timesteps):
            alpha, alpha_next = alphas[int(t)], alphas[int(timesteps[position + 1])]
            clean = (x - (1 - alpha).sqrt() * eps) / alpha.sqrt()
            x = alpha_next.sqrt() * clean + (1 - alpha_next).sqrt() * eps
    return states


def paired_chains(
    eps_functions: Sequence[EpsOfStep], x_start: Tensor, scheduler: SchedulerMixin
) -> Iterator[tuple[Tensor, list[Tensor]]]:
    """Deterministic DDIM chains (``eta = 0``) from the same ``x_T``, one per noise function.

    Yields, at each of the scheduler's timesteps (noisiest first), the timestep and each chain's predicted noise
    there, then steps every chain.
    """
    chains = [x_start.clone() for _ in eps_functions]
    for t in scheduler.timesteps:
        step = t.to(x_start.device)
        predictions = [eps_of(x, step) for eps_of, x in zip(eps_functions, chains, strict=True)]
        yield t, predictions
        chains = [scheduler.step(eps, t, x, eta=0.0).prev_sample for eps, x in zip(predictions, chains, strict=True)]
