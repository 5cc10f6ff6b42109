"""What every report section shares: the :class:`Context` it runs in and the small helpers
for picking examples, a random-weights baseline and timing a section.

The sections themselves live in ``_sections_<method>.py`` (embedding attributions, scores,
semantic vectors and saliency, concepts, similarity); :mod:`._sections` lists them.
"""

from __future__ import annotations

import copy
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List, Optional, Sequence, TextIO, Tuple

import torch
from torch import nn

from ._report import Report

AGGREGATORS = ("mean", "abs", "var")


@dataclass
class Context:
    """What a section needs. ``images`` in ``[0, 1]``; ``model`` in eval mode on ``device``."""

    model: nn.Module
    report: Report
    fit_images: torch.Tensor  # examples to fit concepts on
    fit_labels: torch.Tensor
    eval_images: torch.Tensor  # examples to explain / score (held out from fit_images if eval_held_out)
    eval_labels: torch.Tensor
    class_names: List[str]
    layers: List[str]  # source layers for attributions, scores and concepts
    embedding_layer: Optional[str]
    concept_layer: str
    random_model: Callable[[], nn.Module]  # same architecture, random weights
    device: torch.device
    seed: int
    quick: bool = False
    progress: bool = True
    n_score_examples: int = 64
    benchmark_draws: int = 8
    embedding_dims: Optional[torch.Tensor] = None  # a subset of embedding components (None: all)
    layer_labels: List[str] = field(default_factory=list)
    reshape_transforms: Optional[List[Any]] = None  # one per entry of layers (None: (N, C, *S))
    upsample: Optional[str] = "nearest"
    shift: Optional[str] = None  # CoupledNMFConcepts(shift=...)
    weights_tag: str = "trained"  # "untrained" when no weights were given
    eval_held_out: bool = True  # False: eval_images are fit_images (nothing was held out of the folder)

    def label(self, layer: Optional[str]) -> str:
        if layer is None:
            return "input"
        if self.layer_labels and layer in self.layers:
            return self.layer_labels[self.layers.index(layer)]
        return layer[len("model.") :] if layer.startswith("model.") else layer


def eval_words(ctx: Context) -> str:
    """``"held-out "`` when the evaluation images were kept out of the fitting, else ``""``: a caption
    says "held-out" only when it is true."""
    return "held-out " if ctx.eval_held_out else ""


def pick_examples(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` examples of different classes where possible (first of each class)."""
    seen, picked = set(), []
    for i, y in enumerate(labels.tolist()):
        if y not in seen:
            seen.add(y)
            picked.append(i)
        if len(picked) == k:
            break
    for i in range(len(labels)):
        if len(picked) == k:
            break
        if i not in picked:
            picked.append(i)
    return torch.tensor(picked)


def randomized_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every parameterised submodule re-initialised (``reset_parameters``)."""
    clone = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in clone.modules():
        if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
            module.reset_parameters()
    return clone.eval()


def source_transforms(ctx: Context) -> Optional[List[Any]]:
    """reshape_transform for ``[None (the input)] + ctx.layers``."""
    return None if ctx.reshape_transforms is None else [None] + list(ctx.reshape_transforms)


def run_section(name: str, fn: Callable, report: Report, *args, **kwargs):
    """Run a section and note its time; a method missing from this installation becomes a note."""
    import time

    start = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except ImportError as err:
        report.section(name)
        report.add_note(f"Skipped: {err}")
        return None
    report.add_timing(fn.__name__.strip("_").replace("_", " "), time.perf_counter() - start)
    return result


class Stages:
    """Names each stage of a command as it starts (``captum-concepts: [2/7] reading images``, on
    stderr unless ``show`` is false) and times it; ``timings`` lists ``(stage, seconds)``."""

    def __init__(self, names: Sequence[str], show: bool = True, stream: Optional[TextIO] = None) -> None:
        self.names = list(names)
        self.show = show
        self.stream = stream
        self.timings: List[Tuple[str, float]] = []
        self.started = time.perf_counter()  # the run's start, for the report's total time

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if name not in self.names:  # a programming error: the plan lists every stage
            raise KeyError(f"stage {name!r} is not one of {self.names}")
        if self.show:
            stream = self.stream or sys.stderr
            print(f"captum-concepts: [{self.names.index(name) + 1}/{len(self.names)}] {name}", file=stream)
            stream.flush()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings.append((name, time.perf_counter() - start))
