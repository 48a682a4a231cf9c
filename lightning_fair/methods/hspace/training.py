"""The training of the Attribute Distribution Predictors on h of the training images and pseudo-labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_fair.backbones import DiffusionBackbone
from lightning_fair.data.prompt_sets import batch_prompt
from lightning_fair.diffusion import DiffusionSampler, SamplingState, ddim_inversion
from lightning_fair.diffusion.seeding import TRAINING_STREAM, per_sample_randn, seed_of, training_generators
from lightning_fair.methods.hspace.predictor import write_accuracy_table
from lightning_fair.utils.run_folder import run_folder

ACCURACY_FILE = "adp_accuracy.csv"


class PredictorTraining:
    """``fit`` of h-space guidance: one ADP per guided attribute learns the classifier's labels from h.

    The hooks of :class:`~lightning_fair.methods.hspace.guidance.HSpaceGuidance` that train its ``predictors`` and
    report their validation accuracy at every timestep (logged, and written to ``adp_accuracy.csv``).

    Its images are the training split of the setup's data or, when ``fit`` is given generation requests without
    ``train_data`` (a text-to-image setup without real images), unguided samples of the neutral prompts, as the
    paper's Stable Diffusion experiments train their ADPs on generated images labelled by a classifier.
    """

    backbone: DiffusionBackbone
    sampler: DiffusionSampler
    classifier: nn.Module
    predictors: nn.ModuleDict
    val_accuracy: nn.ModuleDict
    attributes: list[str]
    attribute_columns: list[int]
    accuracy_table: dict[str, list[float]]
    h_source: str
    temperature: float
    learning_rate: float
    weight_decay: float
    seed: int

    def pseudo_labels(self, images: Tensor) -> dict[str, Tensor]:
        """The classifier's predicted class of each guided attribute, ``{name: (B,)}``."""
        predictions = self.classifier.predict(images)
        columns = zip(self.attributes, self.attribute_columns, strict=True)
        return {name: predictions[:, column] for name, column in columns}

    def training_features(
        self, images: Tensor, generators: list[torch.Generator] | None = None, prompt: int = 0
    ) -> tuple[Tensor, Tensor]:
        """H of ``images`` at sampler timesteps and those timesteps, as ``(N, *h_shape)`` and ``(N,)``.

        H is read under neutral prompt ``prompt``: the prompt the images were generated from, as guidance reads it.

        ``noised``: one random sampler timestep per image (``N = B``), timestep and noise of image ``i`` drawn from
        ``generators[i]`` (one per image; needed). ``inversion``: every timestep of a DDIM inversion of each image
        (``N = S * B``, grouped by timestep).
        """
        timesteps = self.sampler.timesteps.to(images.device)
        x0 = self.backbone.encode(images)
        condition = self.neutral_condition(len(images), prompt)
        if self.h_source == "noised":
            choice = torch.cat([torch.randint(len(timesteps), (1,), generator=g) for g in generators])
            t = timesteps[choice.to(images.device)]
            noise = per_sample_randn(generators, tuple(x0.shape[1:]), images.device)
            return self.noised_h(x0, noise, t, condition), t
        features: list[Tensor] = []

        def keep(h: Tensor) -> Tensor:
            features.append(h.float())
            return h

        def eps_reading_h(x: Tensor, t: Tensor) -> Tensor:
            return self.backbone.eps(x, t, condition, h_edit=keep)

        ascending = timesteps.flip(0)
        ddim_inversion(eps_reading_h, x0, ascending, self.sampler.scheduler.alphas_cumprod)
        steps = [t.expand(len(images)) for t in ascending]
        return torch.cat(features), torch.cat(steps)

    def noised_h(self, x0: Tensor, noise: Tensor, t: Tensor, condition: Tensor | None) -> Tensor:
        """H (float32) of ``x0`` noised by the forward process to timesteps ``t`` (``(B,)``), under ``condition``."""
        return self.backbone.h(self.sampler.add_noise(x0, noise, t), t, condition).float()

    def training_images(self, batch: dict[str, Tensor]) -> Tensor:
        """The batch's images, or unguided samples of its generation requests (the neutral prompt of each).

        Samples are drawn with their own seed (``(seed, training stream)``), apart from the evaluation's samples.
        """
        if "image" in batch:
            return batch["image"]
        indices = batch["index"].cpu().long()
        state = SamplingState(indices=indices, condition=self.neutral_condition(len(indices), batch_prompt(indices)))
        if self.uses_cfg:
            state.null_condition = self.null_condition(len(indices))
        seed = seed_of(self.seed, TRAINING_STREAM)
        x = self.sampler.sample(self.unet_eps, state, seed, self.backbone.sample_shape, self.device)
        return self.backbone.decode(x).clamp(-1, 1)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy of every ADP against the classifier's pseudo-labels.

        The timestep and noise of each image depend only on ``(seed, epoch, image index)``, so a resumed fit draws
        what the uninterrupted one would have, whatever the batches or the number of processes.
        """
        generators = training_generators(self.seed, self.current_epoch, batch["index"])
        with torch.no_grad():
            images = self.training_images(batch)
            labels = self.pseudo_labels(images)
            h, t = self.training_features(images, generators, batch_prompt(batch["index"]))
        repeats = len(h) // len(images)
        losses = {
            name: F.cross_entropy(self.predictors[name](h, t) / self.temperature, labels[name].repeat(repeats))
            for name in self.attributes
        }
        for name, loss in losses.items():
            self.log(f"train/loss_{name}", loss, prog_bar=len(losses) == 1)
        return torch.stack(list(losses.values())).sum()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Accuracy of every ADP head at its own timestep (fixed noise per batch)."""
        images = batch["image"]
        labels = self.pseudo_labels(images)
        timesteps = self.sampler.timesteps.to(images.device)
        if self.h_source == "inversion":
            features = [self.training_features(images)]
        else:
            x0 = self.backbone.encode(images)
            generator = torch.Generator().manual_seed(self.seed * 100_003 + batch_idx)
            noise = torch.randn(x0.shape, generator=generator).to(images.device)
            condition = self.neutral_condition(len(images))
            features = []
            for t in timesteps:
                t = t.expand(len(images))
                features.append((self.noised_h(x0, noise, t, condition), t))
        for h, t in features:
            repeats = len(h) // len(images)
            step = self.predictors[self.attributes[0]].head_index(t)
            for name in self.attributes:
                predictions = self.predictors[name](h, t).argmax(dim=1)
                self.val_accuracy[name].update(predictions, labels[name].repeat(repeats), step)

    def on_validation_epoch_end(self) -> None:
        """Logs each ADP's mean accuracy over timesteps and keeps the per-timestep table."""
        for name in self.attributes:
            per_step = self.val_accuracy[name].compute()
            self.val_accuracy[name].reset()
            self.accuracy_table[name] = per_step.tolist()
            self.log(f"val/acc_{name}", per_step.nanmean(), sync_dist=False)

    def on_fit_end(self) -> None:
        """Writes the last per-timestep validation accuracy to ``adp_accuracy.csv`` in the log folder."""
        folder = run_folder(self.trainer)
        if self.trainer.is_global_zero and self.accuracy_table:
            write_accuracy_table(folder / ACCURACY_FILE, self.sampler.timesteps.tolist(), self.accuracy_table)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over the ADPs only."""
        return torch.optim.AdamW(self.predictors.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
