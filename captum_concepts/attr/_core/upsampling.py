"""Upsampling of low-resolution attribution maps to the input's resolution (Bertolini et al., §2.1)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..._utils.validation import validated

__all__ = ["UPSAMPLE_MODES", "upsample_maps", "check_upsample"]

UPSAMPLE_MODES = ("nearest", "bilinear")
_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def check_upsample(mode: Optional[str], argument: str = "upsample") -> Optional[str]:
    if mode is None or mode in UPSAMPLE_MODES:
        return mode
    raise ValueError(f"{argument} must be one of {UPSAMPLE_MODES} or None, got {mode!r}")


@validated()
def upsample_maps(
    maps: torch.Tensor,
    size: Sequence[int],
    mode: Optional[str] = "nearest",
    spatial_dims: Optional[int] = None,
) -> torch.Tensor:
    """Upsample the trailing spatial dimensions of ``maps`` to ``size``.

    Args:
        maps (Tensor): shape ``(*lead, *S)`` where ``S`` are the last ``spatial_dims``
            dimensions, e.g. ``(N, H_l, W_l)`` or ``(N, D, H_l, W_l)``.
        size (sequence of int): the target spatial size, e.g. the input's ``(H0, W0)``.
        mode (str or None): ``"nearest"`` (default, the paper's choice: each superpixel is
            copied over its patch; ``nearest-exact`` indexing, so non-integer ratios stay
            centred), ``"bilinear"`` (linear interpolation in 1-D, 2-D or 3-D,
            ``align_corners=False``), or None (return ``maps`` unchanged).
        spatial_dims (int, optional): number of trailing spatial dimensions of ``maps``;
            default ``len(size)``. ``0`` means one pixel per map (a dense layer): the value is
            copied over the whole ``size``.

    Returns:
        Tensor: shape ``(*lead, *size)``.

    Example::

        from captum_concepts.attr import upsample_maps

        maps = torch.rand(4, 2, 2)  # (N, h, w) maps of a deep layer
        upsample_maps(maps, size=(8, 8)).shape  # torch.Size([4, 8, 8])
    """
    mode = check_upsample(mode, "mode")
    size = tuple(int(s) for s in size)
    if mode is None or len(size) == 0:
        return maps
    k = len(size) if spatial_dims is None else spatial_dims
    lead = maps.shape[: maps.dim() - k]
    if k == 0:
        return maps.reshape(*lead, *([1] * len(size))).expand(*lead, *size).contiguous()
    if k != len(size):
        raise ValueError(
            f"cannot upsample maps with {k} spatial dimension(s) {tuple(maps.shape[-k:])} to the input size "
            f"{size}; pass upsample=None to keep the layer's resolution, or a reshape_transform if the layer "
            "is not (N, C, *S) (captum_concepts.attr.tokens_to_grid, channels_last)"
        )
    if tuple(maps.shape[-k:]) == size:
        return maps
    if k not in _LINEAR:
        raise ValueError(f"upsampling supports 1 to 3 spatial dimensions, got {k}")
    flat = maps.reshape(-1, 1, *maps.shape[-k:])
    if mode == "nearest":
        out = F.interpolate(flat, size=size, mode="nearest-exact")
    else:
        out = F.interpolate(flat, size=size, mode=_LINEAR[k], align_corners=False)
    return out.reshape(*lead, *size)
