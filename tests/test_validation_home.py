"""Validation in one home (issue 31, item 3): the shared model rule, one parser of Captum's
``target``, every public entry decorated; and SimilarityAttribution's explainers built once."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest
import torch

from captum_concepts._utils.validation import InvalidParameterError
from captum_concepts.attr import EmbeddingAttribution, SemanticGradientInput, SimilarityAttribution
from captum_concepts.attr._core import similarity as similarity_module
from captum_concepts.concept import CoupledNMFConcepts, SemanticVector, concept_importance
from captum_concepts.data import DigitsCNN
from captum_concepts.distributed import gather_columns, get_world_size, shard_range
from captum_concepts.metrics import embedding_forward_func, pointing_game, score_curve
from captum_concepts.testing import model_state, run_local_ranks

torch.manual_seed(0)
MODEL = DigitsCNN(width=4, embedding_dim=6).eval()  # 10 logits
X = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
LAYER = "block3.pool"
_seen = []
_hook = MODEL.block3.pool.register_forward_hook(lambda m, i, out: _seen.append(tuple(out.shape[1:])))
with torch.no_grad():
    MODEL(X)
_hook.remove()
SHAPE = _seen[0]  # one example's output of LAYER
MASKS = torch.rand(10, *SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def cnmf():
    return CoupledNMFConcepts(3, MODEL, layers=[LAYER], include_pixels=False, max_iter=5, random_state=0).fit(
        X
    )


# ---------------------------------------------------------------------- the shared model rule
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: EmbeddingAttribution("net"), "model must be a torch.nn.Module, got 'net'"),
        (lambda: SemanticGradientInput("net", LAYER, MASKS), "model must be a torch.nn.Module, got 'net'"),
        (lambda: SimilarityAttribution("net"), "model must be a torch.nn.Module, got 'net'"),
        (lambda: SimilarityAttribution(MODEL, model_b=3), "model_b must be a torch.nn.Module or None, got 3"),
        (lambda: embedding_forward_func("net"), "model must be a torch.nn.Module, got 'net'"),
        (
            lambda: SemanticVector.load("/nonexistent.pt", model="net"),
            "model must be a torch.nn.Module or None",
        ),
    ],
    ids=["ea", "semantic", "similarity", "similarity-model_b", "forward_func", "load"],
)
def test_every_model_argument_is_checked_by_the_one_rule(make, message):
    with pytest.raises(InvalidParameterError, match=message):
        make()


# ---------------------------------------------------------------------- one target parser
def _ea(target):
    return EmbeddingAttribution(MODEL).attribute(X, target=target, show_progress=False)


def _semantic(target):
    return SemanticGradientInput(MODEL, LAYER, MASKS).attribute(X, target=target)


def _importance(cnmf):
    return lambda target: concept_importance(cnmf, X, target=target).importance


@pytest.fixture(params=["ea", "semantic", "concept_importance"])
def explain(request, cnmf):
    return {"ea": _ea, "semantic": _semantic, "concept_importance": _importance(cnmf)}[request.param]


def test_every_entry_taking_a_target_accepts_the_same_forms(explain):
    reference = explain(torch.tensor([3, 3, 3, 3]))
    for same in (
        3,
        np.int64(3),
        [3],
        [3, 3, 3, 3],
        [np.int64(3)] * 4,
        np.array([3, 3, 3, 3]),
        torch.tensor(3),
    ):
        torch.testing.assert_close(explain(same), reference)


@pytest.mark.parametrize(
    "target, error, message",
    [
        ((0, 1), TypeError, "tuple targets"),
        (torch.zeros(4), TypeError, "target must be integer"),
        (torch.tensor([True, False, True, False]), TypeError, "target must be integer"),
        ([True, False, True, False], TypeError, "target must be integer"),
        (
            [0, 1, 2],
            ValueError,
            r"target has 3 entries for 4 examples .*expected one index per example, \(4,\)",
        ),
        (torch.zeros(2, 2, dtype=torch.long), ValueError, "target has 4 entries for 4 examples"),
    ],
    ids=["tuple", "float", "bool-tensor", "bool-list", "count", "2-d"],
)
def test_every_entry_taking_a_target_refuses_the_same_forms_alike(explain, target, error, message):
    with pytest.raises(error, match=message):
        explain(target)


# ---------------------------------------------------------------------- every public entry decorated
PUBLIC = ["attr", "concept", "metrics", "visualization", "data", "distributed", "testing"]
# not entries: records, protocols, nn.Module internals, layout transforms called inside forward passes
EXEMPT = {
    "EmbeddingAttribution.has_convergence_delta", "SemanticMaskSource", "tokens_to_grid", "channels_last",
    "Plan", "PassCosts",
    "PerturbationResult", "ConceptImportance.__init__", "ScoreCurve.__init__", "TrainResult", "DigitsData",
    "FashionMNISTData", "DigitsCNN", "TinyTextTransformer", "TwoDigitCanvas.__init__", "RankFailedError",
    # the estimators' constructors only store their parameters (their tables are checked in fit*)
    "SemanticVector.__init__", "CoupledNMFConcepts.__init__",
    # the out-of-core store is restructured with the coupled-NMF fit (issue 31, item 2)
    "OutOfCore", "ActivationStore",
}  # fmt: skip


def _entries():
    seen = set()
    for package in PUBLIC:
        module = importlib.import_module(f"captum_concepts.{package}")
        for name in module.__all__:
            obj = getattr(module, name)
            if id(obj) in seen or name in EXEMPT:
                continue
            seen.add(id(obj))
            if inspect.isfunction(obj):
                yield name, obj
            elif inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    member = getattr(member, "__func__", member)  # classmethods
                    public = attr == "__init__" or not attr.startswith("_")
                    if inspect.isfunction(member) and public and f"{name}.{attr}" not in EXEMPT:
                        yield f"{name}.{attr}", member


ENTRIES = list(_entries())


def test_the_sweep_finds_the_entries_of_the_issue():
    names = {name for name, _ in ENTRIES}
    assert {
        "SimilarityAttribution.__init__",
        "SimilarityAttribution.similarity_scores",
        "pointing_game",
    } <= names
    assert {"concept_presence_maps", "class_importance", "channel_masks", "SemanticVector.load"} <= names
    assert {"shard_range", "gather_columns", "all_reduce_mean", "model_state", "run_local_ranks"} <= names
    assert len(ENTRIES) >= 85


@pytest.mark.parametrize("name, entry", ENTRIES, ids=[name for name, _ in ENTRIES])
def test_every_public_entry_is_validated(name, entry):
    assert getattr(entry, "__validated__", False), f"{name} is not wrapped by validated"


def test_new_rules_refuse_before_any_work():
    with pytest.raises(InvalidParameterError, match=r"n must be an int >= 0, got 10.5 \(float\)"):
        shard_range(10.5, 0, 2)
    with pytest.raises(InvalidParameterError, match="world_size must be an int >= 1 or None, got 0"):
        shard_range(10, 0, 0)
    with pytest.raises(InvalidParameterError, match="t must be a tensor, got"):
        gather_columns(np.ones(3))
    with pytest.raises(InvalidParameterError, match="model must be a torch.nn.Module, got 'net'"):
        model_state("net")
    with pytest.raises(InvalidParameterError, match="world_size must be an int >= 1, got 0"):
        run_local_ranks(get_world_size, world_size=0)  # before any process starts
    with pytest.raises(InvalidParameterError, match="threshold must be"):
        score_curve(MODEL, "embedding", [LAYER], X, score="variance", threshold=1.5)
    with pytest.raises(InvalidParameterError, match="energy must be a finite real number"):
        pointing_game(torch.rand(2, 8, 8), boxes=torch.tensor([[0, 0, 4, 4]] * 2), energy=float("nan"))


# ---------------------------------------------------------------------- SimilarityAttribution
def test_similarity_builds_its_explainers_once(monkeypatch):
    built = []

    class Counted(EmbeddingAttribution):
        def __init__(self, *args, **kwargs):
            built.append(kwargs.get("upsample", "nearest"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(similarity_module, "EmbeddingAttribution", Counted)
    sa = SimilarityAttribution(MODEL, embedding_layer="embedding", layer=LAYER)
    assert built == [None]  # the per-dimension explainer of the shared encoder, no throwaway one
    a, b = sa.per_dim_maps(X[:2], X[2:])
    sa.per_dim_maps(X[:2], X[2:])
    assert built == [None]
    assert a.shape == b.shape == (2, 6, *SHAPE[1:])  # one layer output: a tensor, as Captum's rule says
    inputs_sa = SimilarityAttribution(MODEL, embedding_layer="embedding")
    ta, tb = inputs_sa.per_dim_maps((X[:2],), X[2:])
    assert isinstance(ta, tuple) and len(ta) == 1 and torch.is_tensor(tb)  # the inputs keep their form
    torch.testing.assert_close(ta[0], inputs_sa.per_dim_maps(X[:2], X[2:])[0])
