"""The generalised pointing game (Gu & Tresp, §5.2), batched.

Keep the most salient pixels of each map until they hold a fraction ``energy``
of its positive energy; the map *hits* when at least ``hit_fraction`` of the
kept energy lies inside the target's box or mask. ``energy=0`` keeps only the
maximum point: the classic pointing game (Zhang et al. 2016).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..._utils.validation import Int, Options, RealNumber, validated

__all__ = ["pointing_game", "pointing_game_curve"]


def _saliency(attributions: torch.Tensor) -> torch.Tensor:
    if not isinstance(attributions, torch.Tensor):
        raise TypeError(
            f"attributions must be a tensor (N, H, W) or (N, C, H, W), got {type(attributions).__name__}"
        )
    if attributions.dim() == 4:
        attributions = attributions.sum(dim=1)
    if attributions.dim() != 3 or attributions.shape[0] == 0:
        raise ValueError(
            f"attributions must have shape (N, H, W) or (N, C, H, W), got {tuple(attributions.shape)}"
        )
    if not bool(torch.isfinite(attributions).all()):
        raise ValueError("attributions contain NaN or infinite values")
    return attributions.detach().float()


def _region(
    boxes: Optional[torch.Tensor], masks: Optional[torch.Tensor], n: int, h: int, w: int, device
) -> torch.Tensor:
    """Boolean ``(N, H, W)`` target region from boxes ``(N, 4)`` / ``(N, K, 4)`` or masks."""
    if (boxes is None) == (masks is None):
        raise ValueError("pass exactly one of boxes= or masks=")
    if masks is not None:
        masks = torch.as_tensor(masks, device=device)
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if tuple(masks.shape) != (n, h, w):
            raise ValueError(f"masks must have shape (N, H, W) = {(n, h, w)}, got {tuple(masks.shape)}")
        return masks > 0 if masks.dtype != torch.bool else masks
    boxes = torch.as_tensor(boxes, device=device)
    if boxes.dim() == 2:
        boxes = boxes[:, None]
    if boxes.dim() != 3 or boxes.shape[0] != n or boxes.shape[2] != 4:
        raise ValueError(
            f"boxes must have shape (N, 4) or (N, K, 4) as (x_min, y_min, x_max, y_max) with N={n}, "
            f"got {tuple(boxes.shape)}"
        )
    ys = torch.arange(h, device=device).view(1, 1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, 1, w)
    b = boxes[..., None, None]
    inside = (xs >= b[:, :, 0]) & (xs < b[:, :, 2]) & (ys >= b[:, :, 1]) & (ys < b[:, :, 3])
    return inside.any(dim=1)


def _dilate(region: torch.Tensor, tolerance: int) -> torch.Tensor:
    """Grow the region by ``tolerance`` pixels (Euclidean disk), as in the classic game."""
    if tolerance == 0:
        return region
    r = torch.arange(-tolerance, tolerance + 1, device=region.device, dtype=torch.float32)
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= tolerance**2).float()[None, None]
    grown = F.conv2d(region[:, None].float(), disk, padding=tolerance)
    return grown[:, 0] > 0


_ARGS = {
    "hit_fraction": RealNumber(0.0, 1.0, low_open=True),
    "tolerance": Int(0),
    "on_empty": Options(("raise", "nan")),
}


def _hits(
    attributions: torch.Tensor,
    boxes,
    masks,
    energies: torch.Tensor,
    hit_fraction: float,
    tolerance: int,
    on_empty: str,
) -> torch.Tensor:
    """Hits ``(E, N)`` as float (1 hit, 0 miss, NaN empty region) for every energy."""
    sal = _saliency(attributions)
    n, h, w = sal.shape
    if energies.numel() == 0 or float(energies.min()) < 0 or float(energies.max()) > 1:
        raise ValueError(
            f"energy must lie in [0, 1] (a fraction of the positive energy), got {energies.tolist()}"
        )
    region = _region(boxes, masks, n, h, w, sal.device)
    empty = ~region.flatten(1).any(dim=1)
    if bool(empty.any()) and on_empty == "raise":
        raise ValueError(
            f"empty target region (box of zero area or all-False mask) for examples "
            f"{torch.nonzero(empty).flatten().tolist()[:10]}; an empty region can never be hit "
            "(pass on_empty='nan' to get NaN for them)"
        )
    region = _dilate(region, tolerance).flatten(1)
    pos = sal.clamp_min(0).flatten(1)  # (N, P)
    ordered, _ = torch.sort(pos, dim=1, descending=True)
    cum = torch.cumsum(ordered, dim=1)
    total = cum[:, -1:]  # the same rounding as the cumulative sums it is compared with
    n_pos = (ordered > 0).sum(dim=1, keepdim=True)
    # Smallest prefix of the sorted map holding >= energy of the total; ties with its
    # last value are kept too (at energy 0: every maximum point).
    # (1 - 1e-6): an energy that a prefix holds exactly (0.8 of 8+4+2+1) selects that prefix
    # despite float rounding of the product.
    need = energies.to(sal.device).view(-1, 1, 1) * total[None] * (1 - 1e-6)  # (E, N, 1)
    idx = torch.searchsorted(cum[None].expand(len(energies), -1, -1).contiguous(), need)
    idx = torch.minimum(idx, (n_pos - 1).clamp_min(0)[None])
    thresh = ordered[None].expand(len(energies), -1, -1).gather(2, idx)  # (E, N, 1)
    kept = (pos[None] >= thresh) & (pos[None] > 0)  # (E, N, P)
    kept_energy = (pos[None] * kept).sum(dim=2)
    outside = (pos[None] * (kept & ~region[None])).sum(dim=2)
    hit = (kept_energy > 0) & (outside <= (1.0 - float(hit_fraction)) * kept_energy)
    hits = hit.float()
    hits[:, empty] = float("nan")
    return hits


@validated(args={**_ARGS, "energy": RealNumber()})
def pointing_game(
    attributions: torch.Tensor,
    boxes: Optional[torch.Tensor] = None,
    masks: Optional[torch.Tensor] = None,
    energy: float = 0.0,
    hit_fraction: float = 1.0,
    tolerance: int = 0,
    on_empty: str = "raise",
) -> torch.Tensor:
    r"""Generalised pointing game: one hit (1.0) or miss (0.0) per example, shape ``(N,)``.

    The saliency map is ``attributions`` summed over channels (for ``(N, C, H, W)``);
    only its positive part counts as energy. Pixels are kept from the most salient
    down until they hold at least ``energy`` of the map's positive energy (pixels
    tied with the last kept value are kept as well). The example is a hit when the
    kept pixels hold at least ``hit_fraction`` of the kept energy inside the target
    region (**[choice]**; the default 1.0 means all of it).

    - ``energy=0`` keeps only the maximum point(s): the classic pointing game.
    - A map without any positive value points nowhere: a miss.
    - An empty region (a box of zero area, an all-False mask) is an error by
      default; with ``on_empty="nan"`` its entry is NaN -- never a hit.

    Computed for the whole batch at once (one sort per map, no Python loop over
    examples).

    Args:
        attributions (Tensor): ``(N, H, W)`` or ``(N, C, H, W)``.
        boxes (Tensor, optional): ``(N, 4)`` or ``(N, K, 4)`` boxes ``(x_min, y_min,
            x_max, y_max)`` in pixels with exclusive maxima (K boxes: their union,
            e.g. several instances of the class).
        masks (Tensor, optional): ``(N, H, W)`` target regions (bool, or > 0).
            Exactly one of ``boxes``/``masks``.
        energy (float): fraction in ``[0, 1]`` of the positive energy to keep.
        hit_fraction (float): share of the kept energy that must lie inside, ``(0, 1]``.
        tolerance (int): grow the region by this many pixels (a Euclidean disk), as
            the classic game's 15-pixel tolerance. Default: 0.
        on_empty (str): ``"raise"`` (default) or ``"nan"`` for empty regions.

    Returns:
        Tensor ``(N,)`` float: 1.0 hit, 0.0 miss (NaN for empty regions with ``on_empty="nan"``).

    Example::

        from captum_concepts.metrics import pointing_game

        maps = torch.zeros(2, 8, 8)
        maps[0, 2, 2] = 1.0  # inside the box
        maps[1, 7, 7] = 1.0  # outside it
        boxes = torch.tensor([[0, 0, 4, 4], [0, 0, 4, 4]])  # x0, y0, x1, y1 per example
        pointing_game(maps, boxes=boxes)  # tensor([1., 0.]): is the maximum in the box?
    """
    return _hits(
        attributions, boxes, masks, torch.tensor([float(energy)]), hit_fraction, tolerance, on_empty
    )[0]


@validated(args=_ARGS)
def pointing_game_curve(
    attributions: torch.Tensor,
    boxes: Optional[torch.Tensor] = None,
    masks: Optional[torch.Tensor] = None,
    energies: Optional[Union[Sequence[float], torch.Tensor]] = None,
    hit_fraction: float = 1.0,
    tolerance: int = 0,
    on_empty: str = "raise",
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Pointing-game accuracy ``hits / (hits + misses)`` over a grid of energies.

    Same rules as :func:`pointing_game`; the maps are sorted once for all energies.
    Examples with an empty region (``on_empty="nan"``) are left out of the accuracy.
    The other arguments are those of :func:`pointing_game`.

    Args:
        energies: fractions in ``[0, 1]``; default ``0, 0.05, ..., 1.0`` (21 values).

    Returns:
        ``(energies (E,), accuracy (E,))``.

    Example::

        from captum_concepts.metrics import pointing_game_curve

        maps = torch.rand(8, 16, 16)
        boxes = torch.tensor([[4, 4, 12, 12]]).repeat(8, 1)
        energies, accuracy = pointing_game_curve(maps, boxes=boxes, energies=[0.0, 0.5, 1.0])
    """
    grid = (
        torch.linspace(0.0, 1.0, 21) if energies is None else torch.as_tensor(energies, dtype=torch.float32)
    )
    grid = grid.reshape(-1)
    hits = _hits(attributions, boxes, masks, grid, hit_fraction, tolerance, on_empty)
    valid = ~torch.isnan(hits[0])
    if not bool(valid.any()):
        raise ValueError("every example has an empty target region")
    return grid, hits[:, valid].mean(dim=1).cpu()
