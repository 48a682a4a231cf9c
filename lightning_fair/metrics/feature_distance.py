"""FID and KID of generated samples in a feature space, exact under DDP whatever the split of the samples."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.image.kid import poly_mmd
from torchmetrics.utilities.distributed import gather_all_tensors


def frechet_distance(reference: Tensor, features: Tensor) -> Tensor:
    """FID between two sets of features ``(N, D)``, in float64, as torchmetrics' ``FrechetInceptionDistance``."""
    moments = []
    for values in (reference.double(), features.double()):
        count = len(values)
        mean = values.sum(dim=0, keepdim=True) / count
        covariance = (values.t().mm(values) - count * mean.t().mm(mean)) / (count - 1)
        moments.append((mean.squeeze(0), covariance))
    (mean_reference, covariance_reference), (mean_features, covariance_features) = moments
    trace_sqrt = torch.linalg.eigvals(covariance_reference @ covariance_features).sqrt().real.sum(dim=-1)
    return (
        (mean_reference - mean_features).square().sum(dim=-1)
        + covariance_reference.trace()
        + covariance_features.trace()
        - 2 * trace_sqrt
    )


def kernel_distance(
    reference: Tensor, features: Tensor, subset_size: int, subsets: int, seed: int
) -> tuple[Tensor, Tensor]:
    """KID (mean and standard deviation over random subsets) as torchmetrics' ``KernelInceptionDistance``.

    Each subset draws ``subset_size`` reference samples, then ``subset_size`` samples of ``features``, from a
    CPU generator seeded with ``seed``: the same subsets as torchmetrics after ``torch.manual_seed(seed)``.
    """
    generator = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        reference_subset = torch.randperm(len(reference), generator=generator)[:subset_size]
        features_subset = torch.randperm(len(features), generator=generator)[:subset_size]
        scores.append(
            poly_mmd(reference[reference_subset.to(reference.device)], features[features_subset.to(features.device)])
        )
    stacked = torch.stack(scores)
    return stacked.mean(), stacked.std(unbiased=False)


class FeatureDistance(Metric):
    """FID and KID of generated samples' features to fixed reference features.

    The state is the generated samples' features and their global sample indices. ``compute`` gathers each of
    the two from every process with the same collective calls on every process (also on one that got no
    sample), then orders the samples by index, so the result is the same whatever the number of processes and
    however the samples were split into batches. The reference features are no state: every process holds all
    of them.

    FID is computed in float64 as torchmetrics' ``FrechetInceptionDistance`` does; KID as its
    ``KernelInceptionDistance`` (polynomial kernel of degree 3) on ``kid_subsets`` subsets drawn with a generator
    seeded with ``seed``, of ``kid_subset_size`` samples capped at the number of generated and of reference
    samples. Both are ``nan`` (undefined) with fewer than two samples on either side.

    Args:
        reference: features of the reference images, ``(N, D)``.
        kid_subset_size: samples per KID subset.
        kid_subsets: number of KID subsets.
        seed: seed of the KID subsets.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, reference: Tensor, kid_subset_size: int = 1000, kid_subsets: int = 100, seed: int = 0) -> None:
        super().__init__(sync_on_compute=False)  # compute gathers the states itself (see above)
        if reference.ndim != 2:
            raise ValueError(f"'reference' must be features of shape (N, D), got {tuple(reference.shape)}")
        if kid_subset_size < 2 or kid_subsets < 1:
            raise ValueError(f"Need kid_subset_size >= 2 and kid_subsets >= 1, got {kid_subset_size} and {kid_subsets}")
        self.kid_subset_size = kid_subset_size
        self.kid_subsets = kid_subsets
        self.seed = seed
        self.register_buffer("reference", reference.detach().float(), persistent=False)
        self.add_state("features", [], dist_reduce_fx="cat")
        self.add_state("indices", [], dist_reduce_fx="cat")

    def update(self, features: Tensor, indices: Tensor | None = None) -> None:
        """Adds the features ``(B, D)`` of generated samples and their global sample indices ``(B,)``.

        Without ``indices``, the samples are numbered after those this process already added: right in a single
        process only (under DDP the numbers repeat across processes, which ``compute`` refuses).
        """
        if features.ndim != 2 or features.shape[1] != self.reference.shape[1]:
            raise ValueError(
                f"'features' must have shape (B, {self.reference.shape[1]}) like the reference, "
                f"got {tuple(features.shape)}"
            )
        if indices is None:
            start = sum(len(chunk) for chunk in self.features)
            indices = torch.arange(start, start + len(features))
        if indices.shape != (len(features),):
            raise ValueError(f"'indices' must have shape ({len(features)},), got {tuple(indices.shape)}")
        self.features.append(features.detach().float().to(self.reference.device))
        self.indices.append(indices.long().to(self.reference.device))

    def _gather(self, chunks: list[Tensor], empty: Tensor) -> Tensor:
        """This process's chunks as one tensor, then those of every process in rank order."""
        local = torch.cat(chunks) if chunks else empty
        if self.distributed_available_fn():
            return torch.cat(gather_all_tensors(local, group=self.process_group))
        return local

    def compute(self) -> dict[str, Tensor]:
        """``fid``, ``kid`` and ``kid_std`` of every process's samples, in sample-index order."""
        device = self.reference.device
        features = self._gather(self.features, torch.empty(0, self.reference.shape[1], device=device))
        indices = self._gather(self.indices, torch.empty(0, dtype=torch.long, device=device))
        if indices.unique().numel() != indices.numel():
            raise ValueError("A generated sample was added twice: each needs its own global sample index")
        features = features[indices.argsort()]
        if min(len(features), len(self.reference)) < 2:
            undefined = torch.tensor(float("nan"), dtype=torch.float64, device=device)
            return {"fid": undefined, "kid": undefined, "kid_std": undefined}
        subset_size = min(self.kid_subset_size, len(features), len(self.reference))
        kid, kid_std = kernel_distance(self.reference, features, subset_size, self.kid_subsets, self.seed)
        return {"fid": frechet_distance(self.reference, features), "kid": kid.double(), "kid_std": kid_std.double()}
