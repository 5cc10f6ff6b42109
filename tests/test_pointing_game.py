"""Generalised pointing game: hand-computed maps, agreement with the classic game, bad input."""

from __future__ import annotations

import pytest
import torch

from captum_concepts.data import make_two_digit_canvas
from captum_concepts.metrics import pointing_game, pointing_game_curve


def ladder_map() -> torch.Tensor:
    """A 4x4 map with energies 8, 4, 2, 1 at known pixels (total positive energy 15)."""
    m = torch.zeros(1, 4, 4)
    m[0, 0, 0], m[0, 0, 1], m[0, 3, 3], m[0, 2, 0] = 8.0, 4.0, 2.0, 1.0
    m[0, 1, 1] = -5.0  # negative values carry no energy
    return m


BOX = torch.tensor([[0, 0, 2, 1]])  # x in [0, 2), y in [0, 1): the 8 and the 4


@pytest.mark.parametrize(
    "energy, hit_fraction, expected",
    [
        (0.0, 1.0, 1.0),  # classic: the maximum (8) is inside
        (0.5, 1.0, 1.0),  # 8 alone holds 8/15 >= 0.5
        (0.8, 1.0, 1.0),  # 8 + 4 = 12/15 = 0.8
        (0.9, 1.0, 0.0),  # 8 + 4 + 2: the 2 lies outside
        (0.9, 0.85, 1.0),  # inside share 12/14 = 0.857 >= 0.85
        (0.9, 0.86, 0.0),
        (1.0, 0.75, 1.0),  # everything positive: 12/15 = 0.8 inside
        (1.0, 0.85, 0.0),
    ],
)
def test_hand_computed_ladder(energy, hit_fraction, expected):
    assert pointing_game(ladder_map(), BOX, energy=energy, hit_fraction=hit_fraction).item() == expected


def test_energy_zero_is_the_classic_pointing_game():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(200, 12, 12, generator=g)
    corners = torch.randint(0, 8, (200, 2), generator=g)
    boxes = torch.cat([corners, corners + 4], dim=1)  # (x_min, y_min, x_max, y_max)
    flat = maps.flatten(1).argmax(dim=1)
    ys, xs = flat // 12, flat % 12
    classic = (xs >= boxes[:, 0]) & (xs < boxes[:, 2]) & (ys >= boxes[:, 1]) & (ys < boxes[:, 3])
    ours = pointing_game(maps, boxes, energy=0.0)
    assert torch.equal(ours, classic.float())
    assert 0 < ours.sum() < 200  # both hits and misses occur


def test_tolerance_grows_the_box():
    m = torch.zeros(1, 6, 6)
    m[0, 2, 4] = 1.0  # one pixel right of the box x in [0, 4)
    box = torch.tensor([[0, 0, 4, 4]])
    assert pointing_game(m, box).item() == 0.0
    assert pointing_game(m, box, tolerance=1).item() == 1.0
    m2 = torch.zeros(1, 6, 6)
    m2[0, 5, 5] = 1.0  # diagonal distance sqrt(2)*2 from the box corner (3, 3)
    assert pointing_game(m2, box, tolerance=2).item() == 0.0  # Euclidean disk, not a square
    assert pointing_game(m2, box, tolerance=3).item() == 1.0


def test_masks_equal_boxes_and_channels_are_summed():
    canvas = make_two_digit_canvas(40, canvas_size=24, random_state=1)
    g = torch.Generator().manual_seed(2)
    attributions = torch.randn(40, 3, 24, 24, generator=g)
    by_box = pointing_game(attributions, canvas.boxes[:, 0], energy=0.3, hit_fraction=0.6)
    by_mask = pointing_game(attributions, masks=canvas.box_masks()[:, 0], energy=0.3, hit_fraction=0.6)
    summed = pointing_game(attributions.sum(dim=1), canvas.boxes[:, 0], energy=0.3, hit_fraction=0.6)
    assert torch.equal(by_box, by_mask) and torch.equal(by_box, summed)
    # several boxes: their union
    both = pointing_game(attributions, canvas.boxes, energy=0.0)
    union = pointing_game(attributions, masks=canvas.box_masks().any(dim=1), energy=0.0)
    assert torch.equal(both, union)


def test_ties_and_maps_without_positive_energy():
    m = torch.zeros(2, 3, 3)
    m[0, 0, 0] = m[0, 2, 2] = 5.0  # two maxima, one outside the box
    m[1] = -1.0  # no positive energy: points nowhere
    box = torch.tensor([[0, 0, 2, 2], [0, 0, 3, 3]])
    assert pointing_game(m, box).tolist() == [0.0, 0.0]
    assert pointing_game(m, box, hit_fraction=0.5).tolist() == [1.0, 0.0]


def test_empty_region_is_never_a_hit():
    m = torch.rand(2, 4, 4)
    boxes = torch.tensor([[0, 0, 4, 4], [2, 2, 2, 4]])  # second box has zero width
    with pytest.raises(ValueError, match="empty target region"):
        pointing_game(m, boxes)
    hits = pointing_game(m, boxes, on_empty="nan")
    assert hits[0].item() == 1.0 and torch.isnan(hits[1])
    energies, acc = pointing_game_curve(m, boxes, energies=[0.0, 0.5], on_empty="nan")
    assert acc.tolist() == [1.0, 1.0]  # the empty example is left out, not counted as a hit
    with pytest.raises(ValueError, match="empty target region"):
        pointing_game(m, masks=torch.zeros(2, 4, 4, dtype=torch.bool))


def test_curve_matches_single_energies():
    canvas = make_two_digit_canvas(30, canvas_size=24, random_state=3)
    attributions = canvas.images + 0.3 * torch.rand(30, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    energies, acc = pointing_game_curve(attributions, canvas.boxes[:, 1])
    assert energies.shape == (21,) and energies[0] == 0 and energies[-1] == 1
    for e, a in zip(energies.tolist(), acc.tolist()):
        assert a == pytest.approx(pointing_game(attributions, canvas.boxes[:, 1], energy=e).mean().item())
    # a map equal to the box itself hits at every energy
    exact = canvas.box_masks()[:, 1].float()
    assert pointing_game_curve(exact, canvas.boxes[:, 1])[1].tolist() == [1.0] * 21


def test_bad_arguments():
    m = torch.rand(2, 4, 4)
    box = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2]])
    with pytest.raises(ValueError, match="exactly one"):
        pointing_game(m)
    with pytest.raises(ValueError, match="exactly one"):
        pointing_game(m, box, masks=torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="energy"):
        pointing_game(m, box, energy=50)
    with pytest.raises(ValueError, match="hit_fraction"):
        pointing_game(m, box, hit_fraction=0.0)
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(m, box, tolerance=-1)
    with pytest.raises(ValueError, match="boxes must have shape"):
        pointing_game(m, torch.tensor([[0, 0, 2, 2]]))
    with pytest.raises(ValueError, match="masks must have shape"):
        pointing_game(m, masks=torch.ones(2, 5, 5))
    with pytest.raises(ValueError, match="attributions must have shape"):
        pointing_game(torch.rand(4, 4), box)
    with pytest.raises(TypeError, match="attributions must be a tensor"):
        pointing_game(m.numpy(), box)
