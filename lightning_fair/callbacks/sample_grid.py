"""A PNG grid of the first generated samples of a run."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics.utilities.distributed import gather_all_tensors
from torchvision.utils import save_image

from lightning_fair.utils.files import replace_atomically
from lightning_fair.utils.run_folder import run_folder


class SampleGrid(Callback):
    """Writes the samples with global indices ``0..num_images-1`` as one PNG grid in the log directory.

    The grid holds the same images whatever the number of processes (they are gathered by index), and in a resumed
    run the samples read back, too (see ``GenerationRequests(skip_existing=...)``). It is written atomically, at the
    end of the run only: a stopped run leaves no grid of part of the samples.

    Args:
        num_images: images in the grid.
        nrow: images per row.
        filename: file name; ``{method}`` is replaced by the method's class name.
    """

    def __init__(self, num_images: int = 64, nrow: int = 8, filename: str = "samples_{method}.png") -> None:
        super().__init__()
        self.num_images = num_images
        self.nrow = nrow
        self.filename = filename
        self.images: list[torch.Tensor] = []
        self.indices: list[torch.Tensor] = []

    def _reset(self, *args: Any) -> None:
        self.images, self.indices = [], []

    on_test_start = on_predict_start = _reset

    def _collect(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any) -> None:
        keep = outputs["index"] < self.num_images
        if keep.any():
            self.images.append(outputs["images"][keep.to(outputs["images"].device)].detach())
            self.indices.append(outputs["index"][keep.cpu()].to(pl_module.device))

    on_test_batch_end = on_predict_batch_end = _collect

    def _write(self, trainer: Trainer, pl_module: LightningModule) -> None:
        shape = (0, *pl_module.backbone.image_shape) if hasattr(pl_module, "backbone") else (0, 3, 1, 1)
        images = torch.cat(self.images) if self.images else torch.empty(shape, device=pl_module.device)
        indices = torch.cat(self.indices) if self.indices else torch.empty(0, dtype=torch.long, device=pl_module.device)
        if trainer.world_size > 1:
            images = torch.cat(gather_all_tensors(images.contiguous()))
            indices = torch.cat(gather_all_tensors(indices.contiguous()))
        folder = run_folder(trainer)
        if trainer.is_global_zero and len(images):
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / self.filename.format(method=type(pl_module).__name__)
            ordered = images[indices.argsort()]
            replace_atomically(
                path, lambda temporary: save_image((ordered + 1) / 2, temporary, "PNG", nrow=self.nrow, padding=1)
            )
        self._reset()

    on_test_epoch_end = on_predict_epoch_end = _write
