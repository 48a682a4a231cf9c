"""Attribute Switching (Choi et al., AAAI 2024): switch the sensitive condition at a calibrated timestep tau."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_fair.backbones import Condition
from lightning_fair.data.prompt_sets import batch_prompt
from lightning_fair.diffusion import (
    SamplerConfig,
    SamplingState,
    Step,
    make_scheduler,
    paired_chains,
    sample_generators,
)
from lightning_fair.diffusion.guidance import guided_eps
from lightning_fair.diffusion.seeding import CONDITION_STREAM, NOISE_STREAM, per_sample_choice, per_sample_randn
from lightning_fair.methods.base import DebiasingMethod
from lightning_fair.methods.conditions import Prompts
from lightning_fair.methods.lifecycle.diagnostics import curve_files
from lightning_fair.metrics import validate_distribution
from lightning_fair.utils.curves import write_curve
from lightning_fair.utils.distributed import sum_over_processes
from lightning_fair.utils.run_folder import run_folder

CURVE_FILE = "tau_curve"


@dataclass
class SwitchingState(SamplingState):
    """The sampling state of Attribute Switching: ``condition`` holds ``s_start``, this the ``s_final`` condition."""

    final_condition: Tensor | None = None


class AttributeSwitching(DebiasingMethod):
    """Training-free fair sampling of a model conditioned on the sensitive attribute (Choi et al., AAAI 2024).

    Each sample draws a starting class ``s_start`` and a final class ``s_final`` independently (from
    ``start_distribution`` and ``final_distribution``, uniform by default); denoising steps with ``t > tau`` are
    conditioned on ``s_start``, the others on ``s_final``. Features formed before ``tau`` thus carry no
    information about the final sensitive attribute. One UNet call per step, as in conditional sampling (two,
    batched, under the sampler's classifier-free guidance). On a text-to-image backbone the classes are the prompts
    of ``prompts.classes``, switched as in the official Stable Diffusion notebook.

    ``fit`` calibrates ``tau`` (unless it is given): from the same ``x_T`` of each calibration sample, one
    deterministic DDIM chain per class (``search_steps`` steps) records ``d_t = beta_t (eps_k - eps_l)`` for each
    class pair; with ``A(tau) = sum_{t > tau} d_t`` and ``B(tau) = sum_{t <= tau} d_t`` (the split the sampler
    uses), ``D(tau)`` is the mean over samples of ``||A - B||``, the norm taken per sample over C, H, W (the
    official notebook takes it over the batch dimension), averaged over class pairs; ``tau`` is its argmin. The chains
    are the toolkit's paired chains and use the same guidance as sampling. The
    sums run over the calibration requests of all processes. The curve is written as ``tau_curve.csv`` and
    ``tau_curve.png`` in the log folder and ``tau`` is kept in the checkpoint.

    Args:
        backbone: a class-conditional or text-to-image diffusers folder or shipped model name.
        sampler: settings of the sampling loop.
        seed: seed of the run.
        prompts: the prompt of each class on a text-to-image backbone.
        tau: the switching timestep (in training timesteps); ``None`` to calibrate it in ``fit``.
        start_distribution: distribution of ``s_start`` (uniform by default).
        final_distribution: distribution of ``s_final`` (uniform by default).
        search_steps: DDIM steps of the calibration chains (official: 1000).
    """

    name = "attribute_switching"

    def __init__(
        self,
        backbone: str,
        sampler: SamplerConfig | None = None,
        seed: int = 0,
        prompts: Prompts | None = None,
        tau: int | None = None,
        start_distribution: list[float] | None = None,
        final_distribution: list[float] | None = None,
        search_steps: int = 1000,
    ) -> None:
        super().__init__(backbone=backbone, sampler=sampler, seed=seed, prompts=prompts)
        self.require_classes(null=self.uses_cfg)
        num_classes = self.num_condition_classes
        self.start_distribution = validate_distribution(start_distribution, num_classes, "start_distribution")
        self.final_distribution = validate_distribution(final_distribution, num_classes, "final_distribution")
        train_steps = self.backbone.scheduler_config["num_train_timesteps"]
        if tau is not None and not 0 <= tau < train_steps:
            raise ValueError(f"Option 'tau' must lie in 0..{train_steps - 1}, got {tau}")
        most_steps = train_steps - self.backbone.scheduler_config.get("steps_offset", 0)
        if not 2 <= search_steps <= most_steps:
            raise ValueError(
                f"Option 'search_steps' must lie in 2..{most_steps} (the timesteps of '{self.backbone.reference}'), "
                f"got {search_steps}"
            )
        self.register_buffer("tau", torch.tensor(-1 if tau is None else tau))
        self.automatic_optimization = False
        self.search = make_scheduler(
            self.backbone.scheduler_config, "ddim", search_steps, clip_sample=not self.backbone.is_latent
        )
        pairs = len(list(itertools.combinations(range(num_classes), 2)))
        self.register_buffer(
            "curve_sum", torch.zeros(len(self.search.timesteps), dtype=torch.float64), persistent=False
        )
        self.register_buffer("curve_count", torch.zeros((), dtype=torch.float64), persistent=False)
        self.num_pairs = pairs

    @property
    def needs_fit(self) -> bool:
        """Whether ``tau`` still has to be calibrated."""
        return int(self.tau) < 0

    def evaluation_targets(self) -> dict[str, list[float]]:
        """``final_distribution`` of the conditioning attribute (the final class decides it)."""
        return {self.condition_attribute: self.final_distribution.tolist()}

    # ------------------------------------------------------------------------------------------------ sampling

    def init_state(self, indices: Tensor) -> SwitchingState:
        """Draws ``s_start`` and then, independently, ``s_final`` (balanced with ``sampler.condition_draw``)."""
        if self.needs_fit:
            raise RuntimeError(
                "AttributeSwitching has no tau: run `fit` to calibrate it, give a checkpoint, or set 'tau'"
            )
        generators = sample_generators(self.seed, indices, CONDITION_STREAM)
        start = per_sample_choice(generators, self.start_distribution).to(self.device)
        if self.sampler.config.condition_draw == "balanced":  # the final class decides the attribute: exact shares
            final = self.draw_classes(indices, self.final_distribution)
        else:
            final = per_sample_choice(generators, self.final_distribution).to(self.device)
        attribute = self.condition_attribute
        return SwitchingState(
            indices=indices,
            condition=self.class_condition(start, batch_prompt(indices)),
            final_condition=self.class_condition(final, batch_prompt(indices)),
            conditions={attribute: final, f"{attribute}_start": start},
        )

    def guided_eps(self, x: Tensor, step: Step, state: SwitchingState) -> Tensor:
        """Conditional eps on ``s_start`` while ``t > tau``, on ``s_final`` from ``tau`` down."""
        condition = state.condition if int(step.timestep) > int(self.tau) else state.final_condition
        return self.unet_eps(x, step, state, condition=condition)

    # ----------------------------------------------------------------------------------------- tau calibration

    def on_train_epoch_start(self) -> None:
        """Starts the calibration sums from zero."""
        self.curve_sum.zero_()
        self.curve_count.zero_()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Adds the calibration requests' ``||A - B||`` at every candidate tau to the running sums."""
        indices = batch["index"].cpu().long()
        if len(indices) == 0:
            return
        with torch.no_grad():
            self.curve_sum += self.switch_distances(indices).sum(dim=0).double()
        self.curve_count += len(indices)

    def switch_distances(self, indices: Tensor) -> Tensor:
        """``||A - B||`` per sample (rows) at each search timestep as tau (columns), averaged over class pairs.

        Column ``j`` is ``tau = search.timesteps[j]``: steps ``0..j-1`` (``t > tau``) form ``A``, the rest ``B``.
        """
        num_classes = self.num_condition_classes
        x_start = per_sample_randn(
            sample_generators(self.seed, indices, NOISE_STREAM), self.backbone.sample_shape, self.device
        )
        null = self.null_condition(len(indices)) if self.uses_cfg else None
        prompt = batch_prompt(indices)
        chains = [
            self._class_eps(torch.full((len(indices),), k, dtype=torch.long), null, prompt) for k in range(num_classes)
        ]
        weighted = [[] for _ in range(num_classes)]  # beta_t * eps_k at each step
        betas = self.search.betas.to(self.device)
        for t, predictions in paired_chains(chains, x_start, self.search):
            for k, eps in enumerate(predictions):
                weighted[k].append(betas[int(t)] * eps)
        distances = []
        for first, second in itertools.combinations(range(num_classes), 2):
            pairs = zip(weighted[first], weighted[second], strict=True)
            d = torch.stack([a - b for a, b in pairs], dim=1).flatten(2)
            total = d.sum(dim=1, keepdim=True)
            before = torch.cumsum(d, dim=1) - d  # sum over steps 0..j-1, i.e. t > tau_j
            distances.append((2 * before - total).norm(dim=2))  # A - B = A - (total - A)
        return torch.stack(distances).mean(dim=0)

    def _class_eps(self, labels: Tensor, null: Condition, prompt: int) -> Callable[[Tensor, Tensor], Tensor]:
        """The noise of one calibration chain, on class ``labels`` of neutral prompt ``prompt``, with guidance."""
        condition, config = self.class_condition(labels, prompt), self.sampler.config
        return lambda x, t: guided_eps(self.backbone, x, t, condition, null, config.cfg_scale, config.cfg_formula)

    def on_train_epoch_end(self) -> None:
        """Sums the curve over processes, picks tau, writes the curve (before the checkpoint is saved)."""
        curve_sum = sum_over_processes(self.curve_sum)
        count = float(sum_over_processes(self.curve_count))
        if count == 0:
            raise RuntimeError("AttributeSwitching calibration saw no samples: check the calibration requests")
        curve = (curve_sum / count).float()
        timesteps = self.search.timesteps
        best = int(curve.argmin())
        self.tau.fill_(int(timesteps[best]))
        rank_zero_info(
            f"AttributeSwitching: tau = {int(self.tau)} (D = {float(curve[best]):.4f}, {int(count)} samples)"
        )
        folder = run_folder(self.trainer)
        if self.trainer.is_global_zero:
            write_curve(
                folder,
                CURVE_FILE,
                "tau",
                timesteps.tolist(),
                {"distance": curve.tolist()},
                int(self.tau),
                f"tau search: argmin at {int(self.tau)}",
            )

    def fit_diagnostics(self) -> list[Path]:
        """The D(tau) curve, ``tau_curve.png`` and ``tau_curve.csv``."""
        return curve_files(run_folder(self.trainer), CURVE_FILE)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restores the checkpoint; one written during the tau search resumes by running the search again.

        Such a checkpoint (SLURM's ``hpc_ckpt_N.ckpt``, taken at any batch) has no ``tau`` and not the search's
        running sums; its loop progress is dropped, so ``fit`` starts the calibration epoch from its first request.
        The search is deterministic: it finds the ``tau`` of an uninterrupted run, every request counted once.
        """
        super().on_load_checkpoint(checkpoint)
        if int(checkpoint["state_dict"]["tau"]) < 0:
            checkpoint.pop("loops", None)

    def configure_optimizers(self) -> None:
        """Nothing to optimise: ``fit`` only calibrates ``tau``."""
        return None
