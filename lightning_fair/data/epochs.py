"""Training epochs that a resumed ``fit`` replays exactly.

Everything random in a training epoch is a function of ``(seed, epoch, sample)`` alone: the order of the samples
(:class:`EpochSampler`), their random transforms (:class:`EpochItems`) and the draws a method makes for them
(:func:`training_generators`). Nothing depends on the global random state, on data-loading workers or on what ran
before, so a fit restored from a checkpoint (end of epoch, every N steps, or SLURM's hpc checkpoint) continues with
the numbers the uninterrupted fit would have drawn. :func:`resume_position` tells the sampler where to start.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_fair.diffusion.seeding import sample_generators

TRAINING_STREAM = 2  # after the sampler's NOISE_STREAM (0) and CONDITION_STREAM (1)
AUGMENTATION_STREAM = 3


def seed_of(*keys: int) -> int:
    """A 64-bit seed of the non-negative integers ``keys`` (different keys, unrelated seeds)."""
    state = np.random.SeedSequence([int(key) for key in keys]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


def training_generators(seed: int, epoch: int, indices: Tensor) -> list[torch.Generator]:
    """One CPU generator per sample for a method's random draws (noise, timesteps, ...) in training epoch ``epoch``.

    Sample ``i`` gets the same numbers whatever the batch, the process, the number of processes or an interruption.
    """
    return sample_generators(seed_of(seed, epoch, TRAINING_STREAM), indices, TRAINING_STREAM)


class EpochItems(Dataset):
    """Key ``epoch * len(dataset) + i``: item ``i`` of ``dataset``, random transforms seeded by ``(seed, epoch, i)``.

    The global torch random state is left as it was.

    Args:
        dataset: a map-style dataset whose transforms draw from torch's global random state.
        seed: seed of the transforms.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int) -> Any:
        epoch, item = divmod(int(key), len(self.dataset))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_of(self.seed, epoch, item, AUGMENTATION_STREAM))
            return self.dataset[item]


class EpochSampler(DistributedSampler):
    """This process's share of a permutation of :class:`EpochItems` seeded by ``(seed, epoch)``, as its keys.

    Lightning calls :meth:`set_epoch` at the start of every epoch (and keeps this sampler under DDP: it is a
    ``DistributedSampler``). A restored fit starts at its epoch after the ``skip`` items this process has trained on.

    Args:
        dataset: the :class:`EpochItems` to sample.
        num_replicas: number of processes.
        rank: this process.
        seed: seed of the permutations.
        epoch: the epoch of the first iteration.
        skip: items of that epoch to leave out (already trained on), in the first iteration only.
    """

    def __init__(self, dataset: EpochItems, num_replicas: int, rank: int, seed: int, epoch: int, skip: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.epoch = epoch
        self.skip = skip

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch of the next iteration; a new epoch starts from its first item."""
        if epoch != self.epoch:
            self.skip = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[self.skip :]
        self.skip = 0
        size = len(self.dataset)
        return iter([self.epoch * size + index for index in indices])


class EpochLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochSampler`: Lightning may resume it mid-epoch.

    Lightning looks for ``state_dict``/``load_state_dict`` on a train loader before it resumes inside an epoch (and
    warns that the results are unreliable without them). The position is not in this state: the sampler is built
    at the position of the loop progress Lightning restores (:func:`resume_position`).
    """

    def state_dict(self) -> dict[str, Any]:
        """Nothing: the position comes from the restored loop progress."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to load (see :meth:`state_dict`)."""


def resume_position(trainer: Any) -> tuple[int, int]:
    """The epoch a fit trains in next and how many of its batches it has trained on, from the trainer's loops.

    Lightning restores the loops' progress from the checkpoint before it asks for the train loader (all counts are
    zero in a fresh fit). An epoch that started but was not processed to its end was interrupted after
    ``processed`` batches (a batch in progress at the interruption is trained again); if its last batch was
    processed, the fit goes on with the next epoch. Without a trainer: ``(0, 0)``.
    """
    if trainer is None:
        return 0, 0
    epochs = trainer.fit_loop.epoch_progress.current
    batches = trainer.fit_loop.epoch_loop.batch_progress
    if epochs.processed == epochs.started:
        return epochs.processed, 0
    if batches.is_last_batch and batches.current.processed == batches.current.ready:
        return epochs.processed + 1, 0
    return epochs.processed, batches.current.processed
