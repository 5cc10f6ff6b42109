"""Shared helpers of the semantic-vector experiments (semantic_*.py)."""

from __future__ import annotations

import warnings
from typing import List, Sequence

import torch

# Several jobs share this CPU: one thread per process avoids oversubscription.
torch.set_num_threads(1)
# Captum's GuidedBackprop warns at every call that it sets backward hooks.
warnings.filterwarnings("ignore", message="Setting backward hooks")
warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")


def markdown_table(title: str, header: Sequence[str], rows: List[Sequence[object]]) -> str:
    """A GitHub markdown table; floats with 3 significant decimals (or scientific when tiny)."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.2e}" if v != 0 and abs(v) < 1e-3 else f"{v:.3f}"
        return str(v)

    lines = [f"\n{title}", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_sd(values: Sequence[float]) -> str:
    t = torch.tensor(values, dtype=torch.float64)
    sd = t.std().item() if len(values) > 1 else 0.0
    return f"{t.mean().item():+.4f} ± {sd:.4f}"
