"""Training epochs that a resumed ``fit`` replays exactly.

Everything random in a training epoch is a function of ``(seed, epoch, sample)`` alone: the order of the samples
(:class:`EpochSampler`), their random transforms (:class:`EpochItems`) and the draws a method makes for them
(:func:`~lightning_fair.diffusion.seeding.training_generators`). Nothing depends on the global random state, on
data-loading workers or on what ran before, so a fit restored from a checkpoint (end of epoch, every N steps, or
SLURM's hpc checkpoint) continues with the numbers the uninterrupted fit would have drawn. :func:`resume_position`
tells the sampler where to start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from lightning.pytorch.loops.progress import _BatchProgress, _Progress
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_fair.diffusion.seeding import AUGMENTATION_STREAM, seed_of


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

    Lightning keeps this sampler under DDP (it is a ``DistributedSampler``). Where an iteration starts (its epoch,
    and the items of that epoch already trained on) is asked of ``start`` each time one begins, not taken from
    :meth:`set_epoch` or fixed when the sampler is built: Lightning may build and even iterate the train loader
    before it restores a checkpoint's loop progress (a method whose ``configure_optimizers`` reads
    ``estimated_stepping_batches`` makes it), and it iterates again when the epoch starts.

    Args:
        dataset: the :class:`EpochItems` to sample.
        num_replicas: number of processes.
        rank: this process.
        seed: seed of the permutations.
        start: returns the epoch of the iteration that begins and how many of its items this process has trained on
            already (left out).
    """

    def __init__(
        self, dataset: EpochItems, num_replicas: int, rank: int, seed: int, start: Callable[[], tuple[int, int]]
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        self.epoch, skip = self.start()
        indices = list(super().__iter__())[skip:]
        size = len(self.dataset)
        return iter([self.epoch * size + index for index in indices])


class EpochLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochSampler`: Lightning may resume it mid-epoch.

    Lightning looks for ``state_dict``/``load_state_dict`` on a train loader before it resumes inside an epoch (and
    warns that the results are unreliable without them). The position is not in this state: the sampler starts at
    the position of the loop progress Lightning restores (:func:`resume_position`).
    """

    def state_dict(self) -> dict[str, Any]:
        """Nothing: the position comes from the restored loop progress."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to load (see :meth:`state_dict`)."""


def resume_position(trainer: Any) -> tuple[int, int]:
    """The epoch a fit trains in next and how many of its batches it has trained on, from the fit loop's progress.

    The progress is the one a checkpoint restores (all counts are zero in a fresh fit). An epoch that started but was
    not processed to its end was interrupted after ``processed`` batches (a batch in progress at the interruption is
    trained again); if its last batch was processed, the fit goes on with the next epoch. Without a trainer:
    ``(0, 0)``.
    """
    if trainer is None:
        return 0, 0
    epochs, batches = _fit_progress(trainer)
    if epochs.current.processed == epochs.current.started:
        return epochs.current.processed, 0
    if batches.is_last_batch and batches.current.processed == batches.current.ready:
        return epochs.current.processed + 1, 0
    return epochs.current.processed, batches.current.processed


def _fit_progress(trainer: Any) -> tuple[_Progress, _BatchProgress]:
    """The fit loop's epoch and batch progress, as the checkpoint being restored has them if there is one.

    Lightning reads a checkpoint before it sets the strategy up and puts its loop progress into the fit loop only
    after that; a ``configure_optimizers`` that reads ``trainer.estimated_stepping_batches`` makes it build and
    iterate the train loader in between, and the fit then trains from that first iterator. Lightning keeps the
    checkpoint it restores (``_loaded_checkpoint``, a private attribute) until the loops have their progress.
    """
    loaded = getattr(trainer._checkpoint_connector, "_loaded_checkpoint", None) or {}
    state = loaded.get("loops", {}).get("fit_loop")
    if state is None:
        return trainer.fit_loop.epoch_progress, trainer.fit_loop.epoch_loop.batch_progress
    epochs = _Progress.from_state_dict(state["epoch_progress"])
    batches = _BatchProgress.from_state_dict(state["epoch_loop.batch_progress"])
    return epochs, batches
