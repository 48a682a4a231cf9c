"""InvDiff's bias inference without labels: soft groups of training images that make the frozen model's loss differ.

One pass of the frozen model over the train split gives each image a diffusion loss; soft group weights ``W`` (one row
on the simplex per image) are then optimised so that the per-group mean losses spread as far as possible (EIIL-style
environment inference with the standard deviation of the group losses as the objective). Images the model fits badly
(typically the minority groups of a biased dataset) gather in the high-loss groups, which the group-invariance loss
then weighs as much as the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score
from torch import Tensor
from torch.utils.data import Dataset

from lightning_fair.backbones import Condition, DiffusionBackbone
from lightning_fair.data.keyed_rows import sharded_pass
from lightning_fair.diffusion.seeding import GROUPING_STREAM, per_sample_randn, sample_generators
from lightning_fair.methods.self_guidance.clusters import fit_clusters

AddNoise = Callable[[Tensor, Tensor, Tensor], Tensor]


@torch.no_grad()
def per_sample_losses(
    backbone: DiffusionBackbone,
    dataset: Dataset,
    condition_of: Callable[[Tensor], Condition],
    add_noise: AddNoise,
    seed: int,
    timesteps: list[int] | None,
    batch_size: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[Tensor, Tensor]:
    """The frozen model's diffusion loss of every image of ``dataset``, against the noise it was given.

    Image ``i`` (its dataset ``index``) is noised with noise drawn from ``(seed, i)`` at one timestep drawn uniformly
    from the same generator, or, with ``timesteps``, at each of them (one column each). The pass is shared
    among the processes by :func:`~lightning_fair.data.keyed_rows.sharded_pass`: every process returns the same
    losses, each image once, however many processes share it.

    Args:
        backbone: the frozen model.
        dataset: items with ``image`` (in [-1, 1]), ``attributes`` and ``index``, in a fixed order.
        condition_of: the backbone's condition of a batch's ``attributes`` (class labels or prompts).
        add_noise: the forward process ``(x0, noise, t) -> x_t``.
        seed: seed of the noise and timesteps.
        timesteps: fixed timesteps to average the loss over; ``None``: one uniform timestep per image.
        batch_size: images per UNet call.
        device: where the model runs.
        rank: this process's rank.
        world_size: number of processes sharing the pass.

    Returns:
        Dataset indices (sorted) and their losses ``(N, T)`` (float64; ``T`` timesteps, 1 without ``timesteps``),
        on the CPU.
    """
    num_train_timesteps = int(backbone.scheduler_config["num_train_timesteps"])

    def losses(batch: dict[str, Tensor]) -> Tensor:
        x0 = backbone.encode(batch["image"])
        condition = condition_of(batch["attributes"])
        generators = sample_generators(seed, batch["index"], GROUPING_STREAM)
        columns = []
        for fixed in timesteps or [None]:
            noise = per_sample_randn(generators, tuple(x0.shape[1:]), device)
            if fixed is None:
                t = torch.cat([torch.randint(0, num_train_timesteps, (1,), generator=g) for g in generators])
            else:
                t = torch.full((len(x0),), fixed, dtype=torch.long)
            t = t.to(device)
            eps = backbone.eps(add_noise(x0, noise, t), t, condition)
            columns.append((eps.float() - noise.float()).pow(2).flatten(1).mean(dim=1).double())
        return torch.stack(columns, dim=1)

    return sharded_pass(dataset, losses, batch_size, device, rank, world_size)


def image_losses(losses: Tensor, normalisation: Literal["none", "timestep"]) -> Tensor:
    """Each image's grouping loss from its per-timestep losses ``(N, T)``: their mean, or the mean of their z-scores.

    A diffusion loss is orders of magnitude larger at some timesteps than at others, so a plain mean is mostly the
    loss at the worst-fitted timesteps, and a minority's excess loss at the others is lost in it. With ``timestep``,
    each column is first standardised over the images (its mean 0, its standard deviation 1): every timestep then
    counts alike, and the result says how far above the others each image's loss lies.
    """
    if normalisation == "none":
        return losses.mean(dim=1)
    scale = losses.std(dim=0, keepdim=True) if len(losses) > 1 else torch.ones_like(losses[:1])
    return ((losses - losses.mean(dim=0, keepdim=True)) / scale.clamp_min(1e-12)).mean(dim=1)


def tail_groups(losses: Tensor, classes: Tensor, num_classes: int, tail_share: float) -> Tensor:
    """Hard groups of the loss tail: each conditioning class's ``tail_share`` worst-fitted images, and the rest.

    The error set of "Just Train Twice" (Liu et al., ICML 2021) as groups: a minority the model fits worse gathers in
    its class's tail group, which the group-invariance loss then weighs as much as the class's other images.

    Args:
        losses: per-image grouping losses ``(N,)``.
        classes: each image's conditioning class ``(N,)``.
        num_classes: ``C``.
        tail_share: the share of each class's images in its tail group.

    Returns:
        One-hot weights ``(N, 2C)``: group ``2c`` holds the rest of class ``c``, group ``2c + 1`` its tail.
    """
    groups = 2 * classes.long()
    for label in range(num_classes):
        members = torch.nonzero(classes == label).flatten()
        tail = max(1, round(tail_share * len(members))) if len(members) else 0
        groups[members[torch.argsort(losses[members], descending=True)[:tail]]] += 1
    return torch.nn.functional.one_hot(groups, 2 * num_classes).float()


def cluster_groups(features: Tensor, classes: Tensor, num_classes: int, num_clusters: int, seed: int) -> Tensor:
    """Hard groups of feature clusters within each class: group ``c K + k`` holds class ``c``'s images of cluster ``k``.

    The loss of a minority that the frozen model fits as well as the majority does not single it out, but a minority
    that looks different (a background, a colour) gets a cluster of its own in the model's features. Each class's
    images are clustered apart (k-means, :func:`~lightning_fair.methods.self_guidance.clusters.fit_clusters`), so
    that the clusters split the class and not the classes; the group-invariance loss then weighs each cluster as much
    as the others.

    Args:
        features: ``(N, D)`` each image's features.
        classes: each image's conditioning class ``(N,)``.
        num_classes: ``C``.
        num_clusters: ``K`` (fewer for a class of fewer images).
        seed: seed of k-means.

    Returns:
        One-hot weights ``(N, C K)`` (groups without images stay empty).
    """
    groups = torch.zeros(len(classes), dtype=torch.long)
    for label in range(num_classes):
        members = torch.nonzero(classes == label).flatten()
        if len(members) == 0:
            continue
        _, clusters = fit_clusters(features[members], min(num_clusters, len(members)), seed)
        groups[members] = label * num_clusters + clusters
    return torch.nn.functional.one_hot(groups, num_classes * num_clusters).float()


def optimise_group_weights(
    losses: Tensor,
    num_groups: int,
    steps: int = 500,
    learning_rate: float = 0.01,
    min_weight_term: float = 0.0,
    seed: int = 0,
) -> Tensor:
    """Soft groups ``W`` (``N x K``, rows on the simplex) that maximise the spread of the per-group mean losses.

    As the official code: ``W`` starts uniform in [0, 1) and takes ``steps`` full-batch Adam steps on
    ``-std_k(L_k) - beta * min_{i,k}(W_ik l_i)``, with ``L_k = sum_i W_ik l_i / sum_i W_ik`` and the unbiased standard
    deviation; after each step ``W`` is clamped at 0 and each row divided by its sum. In float64, on the CPU, so the
    result depends only on the losses and the seed.

    Args:
        losses: per-image losses ``(N,)``.
        num_groups: ``K``.
        steps: Adam steps.
        learning_rate: Adam learning rate.
        min_weight_term: ``beta``, the weight of the term that keeps the smallest weighted loss from vanishing.
        seed: seed of the initial weights.
    """
    if num_groups < 2:
        raise ValueError(f"Option 'num_groups' must be at least 2, got {num_groups}")
    losses = losses.detach().double().cpu()
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(len(losses), num_groups, generator=generator, dtype=torch.float64).requires_grad_(True)
    optimizer = torch.optim.Adam([weights], lr=learning_rate)
    for _ in range(steps):
        weighted = weights * losses[:, None]
        group_losses = weighted.sum(dim=0) / weights.sum(dim=0)
        objective = -group_losses.std() - min_weight_term * weighted.min()
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
        with torch.no_grad():
            weights.clamp_(min=0)
            sums = weights.sum(dim=1, keepdim=True)
            weights.copy_(torch.where(sums > 0, weights / sums.clamp_min(1e-300), 1.0 / num_groups))
    return weights.detach().float()


def group_agreement(weights: Tensor, true_groups: np.ndarray) -> dict[str, float]:
    """How well the inferred groups (each image's largest weight) match known groups: NMI and purity."""
    assigned = weights.argmax(dim=1).numpy()
    purity = sum(np.bincount(true_groups[assigned == k]).max() for k in np.unique(assigned)) / len(assigned)
    return {"nmi": float(normalized_mutual_info_score(true_groups, assigned)), "purity": float(purity)}


def minority_share(weights: Tensor, true_groups: np.ndarray, num_sensitive: int) -> dict[str, float]:
    """The bias-conflicting images' weight in the group loss ``mean_k L_k``, and their share of the images.

    The bias-conflicting images are those whose sensitive class is not the most frequent one of their target class
    (the groups are ``target * num_sensitive + sensitive``); an image's weight in ``mean_k L_k`` is
    ``sum_k W_ik / (K sum_j W_jk)`` over the ``K`` groups with members.
    """
    counts = np.bincount(true_groups, minlength=num_sensitive * (int(true_groups.max()) // num_sensitive + 1))
    majority = counts.reshape(-1, num_sensitive).argmax(axis=1)
    conflicting = true_groups % num_sensitive != majority[true_groups // num_sensitive]
    weights = weights.double()
    mass = weights.sum(dim=0)
    per_image = (weights[:, mass > 0] / mass[mass > 0]).sum(dim=1) / int((mass > 0).sum())
    return {"share": float(per_image[torch.as_tensor(conflicting)].sum()), "images": float(conflicting.mean())}


def group_summary(weights: Tensor, losses: Tensor) -> dict[str, list[float]]:
    """Group sizes (sums of the weights) and mean losses, for the log."""
    mass = weights.sum(dim=0)
    mean_loss = (weights.double() * losses.double()[:, None]).sum(dim=0) / mass.double()
    return {"group_mass": mass.tolist(), "group_loss": mean_loss.tolist()}
