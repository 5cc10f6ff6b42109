"""Export of a fitted :class:`~captum_concepts.concept.CoupledNMFConcepts` to Captum's TCAV (private).

Each concept's top examples become a :class:`captum.concept.Concept` whose ``data_iter`` yields
input tensors, as ``captum.concept.TCAV`` expects; names and ids come from a fingerprint of the
fit, so Captum's activation and CAV caches never mix two fits.
"""

from __future__ import annotations

import hashlib
from typing import List, Optional, Sequence

import torch
from captum.concept import Concept
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..._utils.validation import NONE, AnyOf, InstanceOf, Int, validated
from .cnmf_analyses import FITTED_INPUTS

__all__ = ["_CaptumExport"]


def _fingerprint(*tensors: Tensor, length: int = 10) -> str:
    """A short hex digest of the tensors' bytes (identifies one fit's factors)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:length]


class _ExampleDataset(Dataset):
    """Indexable view of selected examples; batches collate to one input tensor (what TCAV expects)."""

    def __init__(self, inputs: Tensor, indices: Tensor) -> None:
        self.inputs = inputs
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Tensor:
        return self.inputs[self.indices[i]]


class _CaptumExport:
    """``to_captum_concepts``: the concepts as Captum ``Concept`` objects for ``TCAV``."""

    @validated(
        fitted=True,
        args={
            "inputs": FITTED_INPUTS,
            "batch_size": AnyOf(NONE, Int(1)),
            "first_id": AnyOf(NONE, Int(0)),
            "name_prefix": InstanceOf((str,), "a str"),
        },
    )
    def to_captum_concepts(
        self,
        inputs: Tensor,
        k: int = 50,
        concepts: Optional[Sequence[int]] = None,
        batch_size: Optional[int] = None,
        first_id: Optional[int] = None,
        name_prefix: str = "cnmf",
    ) -> List[Concept]:
        """Each concept's top-``k`` examples as a :class:`captum.concept.Concept` for ``TCAV``.

        Args:
            inputs (Tensor): the fitted examples ``(N, ...)`` in fit order.
            k (int): examples per concept (its ``top_examples``).
            concepts (sequence of int, optional): which concepts (default: all ``d``).
            batch_size (int, optional): batch size of each concept's ``DataLoader``
                (default: ``k``, one batch).
            first_id (int, optional): id of the first concept (the others follow);
                ids must be unique across all concepts given to one ``TCAV`` (e.g.
                your random concept). Default: derived from the fingerprint below
                (a multiple of ``n_concepts`` below ``2**31``, as Captum stores ids
                as int32), so unique per fit.
            name_prefix (str): names are ``f"{name_prefix}{c}-{fp}"`` with ``fp`` a
                fingerprint (10 hex digits) of this fit's factors and of the chosen
                top-``k`` examples.

        Captum's ``TCAV`` caches activations under ``save_path`` by concept name
        and id, and CAVs by concept ids alone: names and default ids unique per
        fit (and per ``k``) keep a new fit from silently reusing an old fit's
        activations and CAVs. With your own ``first_id``, use a fresh
        ``save_path`` per fit. The same fit (also after save/load) gives the same
        names and ids, so its cache is reused as intended.

        Returns:
            list of ``Concept(id, name, data_iter)``; each ``data_iter`` is a
            ``DataLoader`` yielding input tensors, as ``TCAV`` expects.
        """
        n = self.example_factors_.shape[1]
        if inputs.shape[0] != n:
            raise ValueError(f"inputs must hold the {n} fitted examples in fit order, got {inputs.shape[0]}")
        top = self.top_examples(k).cpu()
        chosen = range(self.n_concepts) if concepts is None else [int(c) for c in concepts]
        fp = _fingerprint(self._components, self.example_factors_, top)
        if first_id is None:  # Captum keeps class ids as int32: stay below 2**31
            slots = 2**31 // self.n_concepts
            first_id = int(fp, 16) % (slots - 1) * self.n_concepts
        first_id = int(first_id)
        out = []
        for i, c in enumerate(chosen):
            if not 0 <= c < self.n_concepts:
                raise ValueError(f"concepts must be in [0, {self.n_concepts}), got {c}")
            loader = DataLoader(_ExampleDataset(inputs, top[c]), batch_size=batch_size or top.shape[1])
            out.append(Concept(first_id + i, f"{name_prefix}{c}-{fp}", loader))
        return out
