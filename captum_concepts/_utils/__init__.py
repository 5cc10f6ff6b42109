"""Private helpers shared by every module (Captum's ``_utils`` pattern)."""

from .hooks import ModelGuard
from .layers import resolve_layer, resolve_layers

__all__ = ["ModelGuard", "resolve_layer", "resolve_layers"]
