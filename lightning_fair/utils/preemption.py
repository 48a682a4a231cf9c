"""Stopping ``test`` and ``predict`` between batches when the job is asked to terminate (SIGTERM)."""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

TERMINATED_EXIT_STATUS = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


def stop_if_terminated(trainer: Trainer) -> None:
    """Raises ``SIGTERMException`` (exit status 143) on every process once process 0 has received SIGTERM.

    Lightning's SIGTERM handler only sets ``trainer.received_sigterm`` (and, in DDP, broadcasts once from process 0);
    its ``fit`` loop acts on it after each batch, its test loop only within one process and its predict loop never.
    Called after every callback has finished a batch (its records written), this stops ``test`` and ``predict`` the
    way ``fit`` stops: process 0's flag is broadcast exactly as Lightning's ``fit`` loop broadcasts it (the handler's
    own broadcast pairs with it), so every process stops after the same batch and none waits for another. The
    status is not 0, so that a stopped run is never taken for a finished one.
    """
    terminated = trainer.received_sigterm
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        flag = torch.tensor([int(terminated)], device=trainer.strategy.root_device)
        dist.broadcast(flag, src=0)
        terminated = bool(flag.item())
    if terminated:
        rank_zero_info("Received SIGTERM: stopped after the current batch; everything it wrote is complete")
        raise SIGTERMException(TERMINATED_EXIT_STATUS)
