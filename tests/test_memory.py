"""No memory growth (issue 9): 100 repeated ``attribute()`` calls do not grow memory.

After a warm-up, 100 calls (each result dropped before the next) must leave: no more live
tensors than before, at most a few hundred more gc-tracked Python objects, less than 256 KiB
more Python heap (``tracemalloc``), no hook on the model and results without an autograd graph.
On a CUDA machine the same loop also checks ``torch.cuda.memory_allocated``.
"""

from __future__ import annotations

import gc
import tracemalloc
import warnings

import pytest
import torch

from captum_concepts.attr import EmbeddingAttribution, SemanticGradientInput, SemanticGuidedBackprop
from captum_concepts.concept import SemanticVector
from captum_concepts.data import DigitsCNN
from captum_concepts.metrics import noise_score
from captum_concepts.testing import count_hooks

REPEATS = 100
HEAP_BOUND = 256 * 1024
OBJECT_BOUND = 300


def _live_tensors() -> int:
    with warnings.catch_warnings():  # isinstance() touches deprecated torch.distributed shims
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def _setup(device: str):
    torch.manual_seed(0)
    model = DigitsCNN(width=4, embedding_dim=6).eval().to(device)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)).to(device)
    y = torch.tensor([0, 1, 2, 0], device=device)
    return model, x, y


CALLS = {
    "EmbeddingAttribution(input,var)": lambda m, x, y, sv: EmbeddingAttribution(m, "embedding").attribute(x),
    "EmbeddingAttribution(layers,per_dim)": lambda m, x, y, sv: EmbeddingAttribution(
        m, "embedding", layer=["block2.relu", "block3.pool"], method="gradcam"
    ).attribute(x, return_per_dim=True),
    "EmbeddingAttribution(batched)": lambda m, x, y, sv: EmbeddingAttribution(
        m, "embedding", layer="block2.relu", strategy="batched"
    ).attribute(x),
    "SemanticGuidedBackprop": lambda m, x, y, sv: SemanticGuidedBackprop(m, "block3.pool", sv).attribute(
        x, target=y
    ),
    "SemanticGradientInput": lambda m, x, y, sv: SemanticGradientInput(m, "block3.pool", sv).attribute(
        x, target=y
    ),
    "SemanticVector.similarity": lambda m, x, y, sv: sv.similarity(x),
    "noise_score(EmbeddingAttribution)": lambda m, x, y, sv: noise_score(
        EmbeddingAttribution(m, "embedding", layer="block2.relu"), x
    ),
}


def _devices():
    yield "cpu"
    yield pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    )


@pytest.mark.parametrize("device", list(_devices()))
@pytest.mark.parametrize("name", list(CALLS))
def test_repeated_calls_do_not_grow_memory(name, device):
    model, x, y = _setup(device)
    sv = SemanticVector(model, "block3.pool").fit_from_labels((x, y))
    call = CALLS[name]
    for _ in range(3):  # warm-up: lazy imports, caches, allocator pools
        out = call(model, x, y, sv)
    del out
    gc.collect()
    tensors0, objects0 = _live_tensors(), len(gc.get_objects())
    cuda0 = torch.cuda.memory_allocated() if device == "cuda" else 0
    tracemalloc.start()
    try:
        heap0 = tracemalloc.get_traced_memory()[0]
        for _ in range(REPEATS):
            out = call(model, x, y, sv)
            for t in out if isinstance(out, list) else [out]:
                assert t.grad_fn is None, "a result keeps its autograd graph"
            del t
            del out
        gc.collect()
        heap1 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert count_hooks(model) == 0
    assert _live_tensors() <= tensors0, "tensors survive the calls"
    assert len(gc.get_objects()) - objects0 <= OBJECT_BOUND
    assert heap1 - heap0 <= HEAP_BOUND, f"Python heap grew by {heap1 - heap0} bytes over {REPEATS} calls"
    if device == "cuda":
        assert torch.cuda.memory_allocated() <= cuda0 + 1024 * 1024


def test_the_check_detects_a_leak():
    """The same measurement flags a call that keeps its results (so the test can fail)."""
    kept = []
    model, x, _ = _setup("cpu")
    ea = EmbeddingAttribution(model, "embedding")
    ea.attribute(x)
    gc.collect()
    tensors0 = _live_tensors()
    for _ in range(20):
        kept.append(ea.attribute(x))
    gc.collect()
    assert _live_tensors() >= tensors0 + 15
