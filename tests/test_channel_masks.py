"""Class-relative channel masks (our extension beside the paper's per-unit rule)."""

from __future__ import annotations

import pytest
import torch
from captum.attr import GuidedBackprop

from captum_concepts.attr import SemanticGuidedBackprop
from captum_concepts.concept import SemanticVector, channel_masks


@pytest.fixture(scope="module")
def fitted(digits, trained_digits):
    model = trained_digits.model
    sv = SemanticVector(model, "block2.pool").fit_from_labels((digits.x_train[:300], digits.y_train[:300]))
    return model, sv


def test_hand_computed_small_case():
    # 2 concepts, 2 channels, 2 positions: channel means (0.9, 0.1) and (0.3, 0.5)
    rates = torch.tensor([[1.0, 0.8, 0.2, 0.0], [0.4, 0.2, 0.6, 0.4]])
    masks = channel_masks(rates, (2, 2))
    expected = torch.tensor([[[True, True], [False, False]], [[False, False], [True, True]]])
    assert torch.equal(masks, expected)


@pytest.mark.kernels
def test_mode_channel_matches_the_experiment_rule_and_ignores_positions(fitted):
    _, sv = fitted
    masks = sv.masks(mode="channel")
    shape = sv.layer_shape_
    assert masks.shape == (10, *shape) and masks.dtype == torch.bool
    rates = sv.activation_rates_.reshape(10, *shape).mean(dim=(2, 3))
    gap = rates - rates.mean(dim=0, keepdim=True)
    expected = (gap > 0)[:, :, None, None].expand(-1, -1, *shape[1:])
    # a mean summed in another order may differ in its last bit: compare where the rule decides
    # beyond rounding (the masks are thresholds of such means)
    decided = (gap.abs() > 1e-6)[:, :, None, None].expand(-1, -1, *shape[1:])
    assert decided.float().mean() > 0.9
    assert torch.equal(masks[decided], expected[decided])
    assert 0 < masks.float().mean() < 1
    # moving the evidence to other positions (a permutation of the positions) leaves the mask unchanged
    perm = torch.randperm(shape[1] * shape[2], generator=torch.Generator().manual_seed(0))
    moved = sv.activation_rates_.reshape(10, shape[0], -1)[:, :, perm].reshape(10, -1)
    assert torch.equal(channel_masks(moved, shape)[decided], masks[decided])
    assert not torch.equal(sv.masks(0.5), masks)  # the paper's per-unit rule differs
    assert torch.equal(sv.masks(0.5, mode="unit"), sv.masks(0.5))


def test_dense_layer_units_are_channels():
    rates = torch.tensor([[0.9, 0.1, 0.5], [0.1, 0.9, 0.5]])
    assert torch.equal(channel_masks(rates, (3,)), torch.tensor([[True, False, False], [False, True, False]]))


def test_channel_masks_drive_semantic_saliency(digits, fitted):
    model, sv = fitted
    x, t = digits.x_test[:4], digits.y_test[:4]
    ours = SemanticGuidedBackprop(model, "block2.pool", sv.masks(mode="channel")).attribute(x, target=t)
    base = GuidedBackprop(model).attribute(x, target=t)
    assert ours.shape == base.shape and ours.abs().max() > 0
    assert not torch.allclose(ours, base)


def test_bad_mode(fitted):
    with pytest.raises(ValueError, match="mode"):
        fitted[1].masks(mode="position")
