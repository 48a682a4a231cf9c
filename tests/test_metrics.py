import math

import pytest
import torch

from lightning_fair.metrics import (
    AttributeProportions,
    DemographicParityGap,
    FairnessDiscrepancy,
    PairwiseBiasScore,
    validate_distribution,
)

NAN = float("nan")


def _close(actual, expected):
    torch.testing.assert_close(
        actual, torch.as_tensor(expected, dtype=torch.float32), equal_nan=True, rtol=1e-6, atol=1e-6
    )


def test_attribute_proportions():
    metric = AttributeProportions(num_classes=3)
    metric.update(torch.tensor([0, 1, 1]))
    metric.update(torch.tensor([2, 1]))
    # counts over both batches: class 0 x1, class 1 x3, class 2 x1 of 5 -> [1/5, 3/5, 1/5]
    _close(metric.compute(), [0.2, 0.6, 0.2])


def test_attribute_proportions_per_group():
    metric = AttributeProportions(num_classes=2, num_groups=3)
    metric.update(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 0, 1]))
    # group 0: classes [0, 1, 1] -> [1/3, 2/3]; group 1: [1] -> [0, 1]; group 2 empty -> undefined, not [0, 0]
    _close(metric.compute(), [[1 / 3, 2 / 3], [0.0, 1.0], [NAN, NAN]])


def test_attribute_proportions_without_samples_are_nan():
    metric = AttributeProportions(num_classes=2)
    metric.update(torch.tensor([], dtype=torch.long))
    _close(metric.compute(), [NAN, NAN])


# p_hat = [3/4, 1/4] from preds [0, 0, 0, 1]
@pytest.mark.parametrize(
    ("target", "distance", "expected"),
    [
        # uniform [1/2, 1/2]: sqrt(1/4^2 + 1/4^2) = sqrt(2)/4
        (None, "l2", math.sqrt(2) / 4),
        # |3/4 - 1/2| + |1/4 - 1/2| = 1/2
        (None, "l1", 0.5),
        # 3/4 ln(3/4 / 1/2) + 1/4 ln(1/4 / 1/2) = 3/4 ln 1.5 - 1/4 ln 2 ~= 0.130812
        (None, "kl", 0.75 * math.log(1.5) - 0.25 * math.log(2)),
        # target [0.6, 0.4]: sqrt(0.15^2 + 0.15^2) = 0.15 sqrt(2)
        ([0.6, 0.4], "l2", 0.15 * math.sqrt(2)),
        # 0.15 + 0.15
        ([0.6, 0.4], "l1", 0.3),
        # 3/4 ln(0.75 / 0.6) + 1/4 ln(0.25 / 0.4) = 3/4 ln 1.25 + 1/4 ln 0.625 ~= 0.049857
        ([0.6, 0.4], "kl", 0.75 * math.log(1.25) + 0.25 * math.log(0.625)),
        # target equal to p_hat -> 0 for every distance
        ([0.75, 0.25], "l2", 0.0),
        ([0.75, 0.25], "kl", 0.0),
    ],
)
def test_fairness_discrepancy(target, distance, expected):
    metric = FairnessDiscrepancy(num_classes=2, target_distribution=target, distance=distance)
    metric.update(torch.tensor([0, 0]))
    metric.update(torch.tensor([0, 1]))
    _close(metric.compute(), expected)


# 3 classes, preds [0, 0, 0, 1] -> p_hat = [3/4, 1/4, 0]: class 2 never predicted counts as 0 (not dropped)
@pytest.mark.parametrize(
    ("distance", "expected"),
    [
        # sqrt((1/3 - 3/4)^2 + (1/3 - 1/4)^2 + (1/3)^2) = sqrt(25/144 + 1/144 + 16/144) = sqrt(42)/12
        # (dropping class 2 would give sqrt(26)/12)
        ("l2", math.sqrt(42) / 12),
        # 5/12 + 1/12 + 4/12 = 5/6
        ("l1", 5 / 6),
        # 3/4 ln(9/4) + 1/4 ln(3/4) + 0 (0 log 0 = 0)
        ("kl", 0.75 * math.log(9 / 4) + 0.25 * math.log(3 / 4)),
    ],
)
def test_fairness_discrepancy_missing_class_counts_as_zero(distance, expected):
    metric = FairnessDiscrepancy(num_classes=3, distance=distance)
    metric.update(torch.tensor([0, 0, 0, 1]))
    _close(metric.compute(), expected)


def test_fairness_discrepancy_per_group():
    metric = FairnessDiscrepancy(num_classes=2, num_groups=3)
    metric.update(torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 0, 0, 1, 1]))
    # group 0: p_hat [3/4, 1/4] -> sqrt(2)/4; group 1: [0, 1] -> sqrt(1/4 + 1/4) = sqrt(1/2); group 2 empty -> nan
    result = metric.compute()
    assert result.shape == (3,)
    _close(result, [math.sqrt(2) / 4, math.sqrt(0.5), NAN])


def test_fairness_discrepancy_empty_is_nan():
    metric = FairnessDiscrepancy(num_classes=2)
    metric.update(torch.tensor([], dtype=torch.long))
    assert math.isnan(metric.compute().item())


def test_fairness_discrepancy_accepts_scores():
    metric = FairnessDiscrepancy(num_classes=2, distance="l1")
    # argmax of each row -> [0, 0, 0, 1], p_hat [3/4, 1/4] -> l1 = 1/4 + 1/4 = 1/2
    metric.update(torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7]]))
    _close(metric.compute(), 0.5)


def test_demographic_parity_gap():
    metric = DemographicParityGap(num_target_classes=2, num_sensitive_classes=3)
    metric.update(torch.tensor([1, 1, 0, 1, 0]), torch.tensor([0, 0, 0, 1, 1]))
    metric.update(torch.tensor([0, 0, 0, 1]), torch.tensor([1, 1, 2, 2]))
    # P(t=1 | s): s=0: 2/3, s=1: 1/4, s=2: 1/2 -> gap 2/3 - 1/4 = 5/12
    _close(metric.compute(), 5 / 12)


def test_demographic_parity_gap_positive_class_and_empty_group():
    metric = DemographicParityGap(num_target_classes=3, num_sensitive_classes=3, positive_class=2)
    metric.update(torch.tensor([2, 0, 1, 2, 2, 2, 0]), torch.tensor([0, 0, 0, 0, 2, 2, 2]))
    # P(t=2 | s): s=0: 2/4, s=1: empty (ignored, not 0), s=2: 2/3 -> gap 2/3 - 1/2 = 1/6
    _close(metric.compute(), 1 / 6)


@pytest.mark.parametrize(
    ("preds", "groups"),
    [
        ([], []),  # no sample at all
        ([0, 1, 1], [1, 1, 1]),  # only one sensitive group has samples
        ([0, 0, 0, 0], [0, 1, 2, 1]),  # no sample in the positive class: rates 0, 0, 0 measure nothing
        ([1, 1, 1], [0, 1, 2]),  # every sample in the positive class: rates 1, 1, 1
    ],
)
def test_demographic_parity_gap_nan_when_it_cannot_be_measured(preds, groups):
    metric = DemographicParityGap(num_sensitive_classes=3)
    metric.update(torch.tensor(preds, dtype=torch.long), torch.tensor(groups, dtype=torch.long))
    assert math.isnan(metric.compute().item())


@pytest.mark.parametrize(
    ("preds", "expected"),
    [
        ([0, 0, 0, 1], 0.5),  # |3/4 - 1/4|
        ([1, 1, 1, 1, 0], 0.6),  # |1/5 - 4/5|
        ([0, 1, 0, 1], 0.0),  # |1/2 - 1/2|
        ([1, 0, 1, 1, 1, 0, 0], 1 / 7),  # |3/7 - 4/7|
    ],
)
def test_pairwise_bias_score_two_classes_is_proportion_gap(preds, expected):
    metric = PairwiseBiasScore(num_classes=2)
    metric.update(torch.tensor(preds))
    _close(metric.compute(), expected)


def test_pairwise_bias_score_three_classes():
    metric = PairwiseBiasScore(num_classes=3)
    metric.update(torch.tensor([0, 0, 0, 1, 1, 2]))
    # counts [3, 2, 1], N = 6: (|3-2| + |3-1| + |2-1|) / 6 / (3*2/2) = 4 / 6 / 3 = 2/9
    _close(metric.compute(), 2 / 9)


def test_pairwise_bias_score_mean_over_groups():
    metric = PairwiseBiasScore(num_classes=3, num_groups=3)
    metric.update(torch.tensor([0, 0, 0, 1, 1, 2, 0, 1, 2]), torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1]))
    # group 0: counts [3, 2, 1] -> 2/9; group 1: [1, 1, 1] -> 0; group 2 empty (skipped) -> (2/9 + 0) / 2 = 1/9
    _close(metric.compute(), 1 / 9)


def test_pairwise_bias_score_per_group():
    metric = PairwiseBiasScore(num_classes=3, num_groups=3, per_group=True)
    metric.update(torch.tensor([0, 0, 0, 1, 1, 2, 0, 1, 2]), torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1]))
    scores = metric.compute()
    _close(scores[:2], torch.tensor([2 / 9, 0.0]))
    assert math.isnan(scores[2].item())  # no sample in group 2


def test_pairwise_bias_score_empty_is_nan():
    metric = PairwiseBiasScore(num_classes=2)
    metric.update(torch.tensor([], dtype=torch.long))
    assert math.isnan(metric.compute().item())


def test_validate_distribution_values():
    torch.testing.assert_close(validate_distribution(None, 4), torch.full((4,), 0.25, dtype=torch.float64))
    torch.testing.assert_close(
        validate_distribution([0.2, 0.0, 0.8], 3), torch.tensor([0.2, 0.0, 0.8], dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("values", "num_classes", "match"),
    [
        ([0.5, 0.5], 3, r"'my_option' has 2 entries; expected 3"),
        ([-0.1, 1.1], 2, r"'my_option' has negative entries"),
        ([0.3, 0.3, 0.3], 3, r"'my_option' must sum to 1"),
        ([0.6, 0.6], 2, r"'my_option' must sum to 1"),
        (None, 1, r"'my_option' needs at least 2 classes"),
    ],
)
def test_validate_distribution_errors(values, num_classes, match):
    with pytest.raises(ValueError, match=match):
        validate_distribution(values, num_classes, option="my_option")


def test_fairness_discrepancy_rejects_bad_target():
    with pytest.raises(ValueError, match=r"'target_distribution' must sum to 1"):
        FairnessDiscrepancy(num_classes=2, target_distribution=[0.7, 0.7])
    with pytest.raises(ValueError, match=r"'distance'"):
        FairnessDiscrepancy(num_classes=2, distance="l3")
    with pytest.raises(ValueError, match=r"'positive_class'"):
        DemographicParityGap(num_target_classes=2, positive_class=2)


@pytest.mark.parametrize("cls", [AttributeProportions, FairnessDiscrepancy, PairwiseBiasScore])
@pytest.mark.parametrize(
    ("preds", "groups", "match"),
    [
        ([0, 3], None, r"classes must lie in 0\.\.2"),
        ([-1, 0], None, r"classes must lie in 0\.\.2"),
        ([0, 1], [0, 2], r"Groups must lie in 0\.\.1"),
        ([0, 1], [-1, 0], r"Groups must lie in 0\.\.1"),
        ([0, 1], [0], r"'groups' has shape"),
    ],
)
def test_update_errors(cls, preds, groups, match):
    metric = cls(num_classes=3, num_groups=2)
    groups = None if groups is None else torch.tensor(groups)
    with pytest.raises(ValueError, match=match):
        metric.update(torch.tensor(preds), groups)
    assert metric.counts.sum() == 0  # a rejected batch is not counted


def test_demographic_parity_gap_update_errors():
    metric = DemographicParityGap(num_target_classes=2, num_sensitive_classes=2)
    with pytest.raises(ValueError, match=r"classes must lie in 0\.\.1"):
        metric.update(torch.tensor([0, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"Groups must lie in 0\.\.1"):
        metric.update(torch.tensor([0, 1]), torch.tensor([0, 2]))


def test_kl_is_infinite_when_a_predicted_class_has_target_zero():
    # p_hat = [0.5, 0.5], target = [1, 0]: 0.5 * log(0.5 / 0) = inf.
    metric = FairnessDiscrepancy(2, target_distribution=[1.0, 0.0], distance="kl")
    metric.update(torch.tensor([0, 1]))
    assert metric.compute().item() == math.inf


def test_scores_must_have_one_column_per_class():
    metric = AttributeProportions(2)
    with pytest.raises(ValueError, match=r"shape \(N, 2\), got \(3, 1\)"):
        metric.update(torch.tensor([[1], [1], [0]]))
