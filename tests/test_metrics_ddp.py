import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_fair.metrics import (
    AttributeProportions,
    DemographicParityGap,
    FairnessDiscrepancy,
    FeatureDistance,
    PairwiseBiasScore,
)
from lightning_fair.utils.distributed import gather_rows

NUM_SAMPLES = 11
# uneven shards: rank 0 gets 7 samples in batches of 3 and 4, rank 1 gets 4 in batches of 2 and 2
# (a batch of 2 cannot contain all 3 classes, so some class never appears in it)
SHARDS = [[(0, 3), (3, 7)], [(7, 9), (9, 11)]]


def _inputs():
    generator = torch.Generator().manual_seed(1234)
    return {
        "classes": torch.randint(0, 3, (NUM_SAMPLES,), generator=generator),
        "scores": torch.randn(NUM_SAMPLES, 3, generator=generator),
        "binary": torch.randint(0, 2, (NUM_SAMPLES,), generator=generator),
        "groups": torch.randint(0, 3, (NUM_SAMPLES,), generator=generator),
    }


def _metrics():
    # (metric, preds key, uses groups); num_groups=4 leaves group 3 empty (nan for FairnessDiscrepancy)
    return {
        "proportions": (AttributeProportions(num_classes=3), "classes", False),
        "proportions_groups": (AttributeProportions(num_classes=3, num_groups=4), "scores", True),
        "fd_l2": (FairnessDiscrepancy(num_classes=3), "classes", False),
        "fd_l1_groups": (FairnessDiscrepancy(num_classes=3, distance="l1", num_groups=4), "classes", True),
        "fd_kl": (
            FairnessDiscrepancy(num_classes=3, target_distribution=[0.5, 0.3, 0.2], distance="kl"),
            "scores",
            False,
        ),
        "dp_gap": (DemographicParityGap(num_target_classes=2, num_sensitive_classes=3), "binary", True),
        "bias": (PairwiseBiasScore(num_classes=3), "classes", False),
        "bias_groups": (PairwiseBiasScore(num_classes=3, num_groups=4), "classes", True),
        "bias_each_group": (PairwiseBiasScore(num_classes=3, num_groups=4, per_group=True), "classes", True),
    }


def _compute(batches):
    results = {}
    for name, (metric, key, uses_groups) in _metrics().items():
        for batch in batches:
            metric.update(batch[key], batch["groups"] if uses_groups else None)
        results[name] = metric.compute()
    return results


# Generated samples 0..8 for FeatureDistance: process 0 gets them in 4 batches out of order, process 1 none at all
# (it still makes the same collective calls).
FEATURE_SHARDS = [[[6, 2, 7], [0], [8, 4], [1, 3, 5]], []]


def _features():
    generator = torch.Generator().manual_seed(7)
    return torch.randn(12, 5, generator=generator), torch.randn(9, 5, generator=generator) + 0.5


def _feature_distance(batches):
    reference, generated = _features()
    metric = FeatureDistance(reference, kid_subset_size=6, kid_subsets=10)
    for indices in batches:
        metric.update(generated[indices], torch.tensor(indices))
    return metric.compute()


ROW_COUNTS = (7, 4)  # rows of each process for gather_rows: uneven, none padded or repeated


def _worker(rank, world_size, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        inputs = _inputs()
        batches = [{k: v[start:stop] for k, v in inputs.items()} for start, stop in SHARDS[rank]]
        torch.save(_compute(batches), os.path.join(out_dir, f"rank{rank}.pt"))
        torch.save(_feature_distance(FEATURE_SHARDS[rank]), os.path.join(out_dir, f"features{rank}.pt"))
        rows = torch.arange((ROW_COUNTS[0] + ROW_COUNTS[1]) * 2, dtype=torch.float64).view(-1, 2)
        share = rows[: ROW_COUNTS[0]] if rank == 0 else rows[ROW_COUNTS[0] :]
        torch.save(gather_rows(share), os.path.join(out_dir, f"rows{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """The results of every process of one 2-process gloo run."""
    folder = tmp_path_factory.mktemp("ddp")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(folder)), nprocs=2, join=True)
    return folder


def test_metrics_exact_under_ddp(ddp_results):
    expected = _compute([_inputs()])
    for shard in SHARDS:  # every metric differs on a shard alone, so a missing sync would be caught
        local = _compute([{k: v[start:stop] for k, v in _inputs().items()} for start, stop in shard])
        assert all(not torch.equal(local[n].nan_to_num(-1), expected[n].nan_to_num(-1)) for n in expected)
    assert torch.isnan(expected["fd_l1_groups"][3])  # the empty group
    for rank in range(2):
        results = torch.load(ddp_results / f"rank{rank}.pt")
        assert results.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(results[name], value, rtol=0, atol=0, equal_nan=True, msg=name)


def test_feature_distance_exact_under_ddp_with_a_process_without_samples(ddp_results):
    expected = _feature_distance([list(range(9))])
    assert all(torch.isfinite(value) for value in expected.values())
    for rank in range(2):
        results = torch.load(ddp_results / f"features{rank}.pt")
        for name, value in expected.items():  # the same order of samples, so the same subsets and sums
            torch.testing.assert_close(results[name], value, rtol=1e-12, atol=0, msg=name)


def test_gather_rows_concatenates_uneven_shares_in_rank_order(ddp_results):
    expected = torch.arange(22, dtype=torch.float64).view(-1, 2)
    for rank in range(2):
        assert torch.equal(torch.load(ddp_results / f"rows{rank}.pt"), expected)
