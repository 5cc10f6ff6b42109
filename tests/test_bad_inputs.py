"""Bad-input matrix (issue 9): every public class and function against what users throw at it.

Each case either raises a clear ``TypeError``/``ValueError``/``RuntimeError`` whose message names the
argument (or, for inputs the *model* cannot take -- wrong channel count, wrong dtype, a missing
forward argument, a model on another device -- the model's own PyTorch error, unchanged), or
returns a documented correct result that the case checks. After every case the models involved
have no hooks left and the same modes, ``requires_grad`` flags and parameters.

Case counts (kept equal to the lists below by ``test_case_counts_match_the_docstring``):

- ERROR_CASES: 195 cases that must raise a clear error: EmbeddingAttribution 32,
  SemanticGuidedBackprop and SemanticGradientInput 17 each (34), SemanticVector 25,
  CoupledNMFConcepts 46, its out-of-core mode (OutOfCore, ActivationStore, fit_store) 13,
  noise/benchmark/variance/drift scores and score_curve 27, pointing game 13,
  visualization 5.
- RESULT_CASES: 33 cases with a documented correct result (D = 1 equals Captum, in-place and reused
  ReLUs equal the plain model, train-mode models explained in eval mode and left in train mode,
  extra forward arguments, constant/zero maps and layers, zero rows/columns, rank > data, NaN
  confined to its example, empty boxes -> NaN, never a hit).
- Hypothesis properties: 4 (20 generated examples each): scores within [0, 1] and [0, 1/4] on arbitrary
  (constant, zero, spiky, negative) maps; pointing game in {0, 1} and equal to the classic game at
  energy 0; coupled NMF finite and non-negative on sparse data with zero rows/columns; embedding
  attributions finite on finite inputs.

See RELIABILITY.md for the table of faults and what each returns.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import tempfile
import warnings

import numpy as np
import pytest
import torch
from captum.attr import GuidedBackprop, InputXGradient, Saliency
from captum.testing.helpers.basic_models import (
    BasicModel_ConvNet_One_Conv,
    BasicModel_MultiLayer_MultiInput,
    BasicModelWithReusedModules,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError
from torch import nn

from captum_concepts.attr import EmbeddingAttribution, SemanticGradientInput, SemanticGuidedBackprop
from captum_concepts.concept import ActivationStore, CoupledNMFConcepts, OutOfCore, SemanticVector
from captum_concepts.data import DigitsCNN
from captum_concepts.metrics import (
    drift_score,
    noise_benchmark,
    noise_score,
    pointing_game,
    pointing_game_curve,
    score_curve,
    variance_score,
)
from captum_concepts.testing import assert_same_state, model_state
from captum_concepts.visualization import (
    visualize_attribution_grid,
    visualize_relevance_matrix,
    visualize_score_curve,
    visualize_similarity_matrices,
)

# ---------------------------------------------------------------------- models and data
torch.manual_seed(0)
CNN = DigitsCNN(width=4, embedding_dim=8).eval()  # embedding D = 8, block3.pool (16, 2, 2)
G = torch.Generator().manual_seed(0)
X = torch.rand(4, 1, 8, 8, generator=G)
Y = torch.tensor([0, 1, 2, 0])
X_NAN = X.clone()
X_NAN[0, 0, 3, 3] = float("nan")
X_INF = X.clone()
X_INF[0, 0, 3, 3] = float("inf")
META = copy.deepcopy(CNN).to("meta")


class Unused(nn.Module):
    """``unused`` never runs in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.relu = nn.ReLU()
        self.unused = nn.ReLU()

    def forward(self, x):
        return self.relu(self.lin(x))


class ZeroD(nn.Module):
    """An embedding with D = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 0)

    def forward(self, x):
        return self.lin(x)


class NoGrad(nn.Module):
    """The output does not depend differentiably on anything."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        with torch.no_grad():
            return self.lin(x)


class WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(self.drop(self.relu(self.lin(x))))


class OneDimHead(nn.Module):
    """DigitsCNN with the embedding reduced to its dimension 3 (for Captum equality at D = 1)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.embed(x)[:, 3:4]


class ScaleBound(nn.Module):
    """``BasicModel_MultiLayer_MultiInput`` with its extra ``scale`` argument fixed."""

    def __init__(self, model: nn.Module, scale: int) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x1, x2, x3):
        return self.model(x1, x2, x3, self.scale)


torch.manual_seed(1)
UNUSED, ZERO_D, NO_GRAD, DROPOUT = Unused(), ZeroD(), NoGrad(), WithDropout()
REUSED = BasicModelWithReusedModules()
CONV = BasicModel_ConvNet_One_Conv()
CONV_INPLACE = BasicModel_ConvNet_One_Conv(inplace=True)
MULTI = BasicModel_MultiLayer_MultiInput()
X_CONV = torch.rand(3, 1, 4, 4, generator=G) * 20  # large enough to pass the conv's -50 bias
X_LIN = torch.randn(5, 3, generator=G)
X_MULTI = tuple(torch.randn(5, 3, generator=G) for _ in range(3))
ALL_MODELS = [CNN, UNUSED, ZERO_D, NO_GRAD, DROPOUT, REUSED, CONV, CONV_INPLACE, MULTI]
for _m in ALL_MODELS:
    _m.eval()
ALL_INPUTS = [X, X_NAN, X_INF, X_CONV, X_LIN, *X_MULTI]


@functools.cache
def fitted_sv() -> SemanticVector:
    return SemanticVector(CNN, "block3.pool", random_state=0).fit_from_labels((X, Y))


@functools.cache
def named_sv() -> SemanticVector:
    return SemanticVector(CNN, "block3.pool").fit({"round": X[:2], "thin": X[2:]})


@functools.cache
def fitted_cnmf() -> CoupledNMFConcepts:
    g = torch.Generator().manual_seed(2)
    return CoupledNMFConcepts(3, max_iter=10).fit_matrices(
        [torch.rand(6, 10, generator=g)], [torch.rand(5, 10, generator=g)]
    )


def ea(**kw) -> EmbeddingAttribution:
    kw.setdefault("embedding_layer", "embedding")
    return EmbeddingAttribution(CNN, **kw)


ONES = torch.ones(3, 16, 2, 2)  # all-ones semantic masks for block3.pool, 3 classes


# ---------------------------------------------------------------------- error cases
def E(case_id, fn, exc, match):
    return pytest.param(fn, exc, match, id=case_id)


EA_ERRORS = [
    E("ea-model-not-module", lambda: EmbeddingAttribution(lambda x: x), TypeError, "model must be"),
    E("ea-method", lambda: ea(method="lrp"), ValueError, "method must be"),
    E("ea-strategy", lambda: ea(strategy="fast"), ValueError, "strategy must be"),
    E("ea-layer-typo", lambda: ea(layer="blok2.relu"), ValueError, r"layer='blok2.relu'.*Did you mean"),
    E(
        "ea-layer-foreign-module",
        lambda: ea(layer=nn.ReLU()),
        ValueError,
        "layer is a ReLU module that is not",
    ),
    E("ea-embedding-layer-typo", lambda: ea(embedding_layer="embeding"), ValueError, "embedding_layer="),
    E("ea-layer-empty-list", lambda: ea(layer=[]), ValueError, "layer is an empty list"),
    E("ea-layer-list-typo", lambda: ea(layer=[None, "x"]), ValueError, r"layer\[1\]='x'"),
    E(
        "ea-channel-aggregator",
        lambda: ea(channel_aggregator="median"),
        ValueError,
        "channel_aggregator must",
    ),
    E("ea-embedding-aggregator", lambda: ea(embedding_aggregator=3), ValueError, "embedding_aggregator must"),
    E("ea-upsample", lambda: ea(upsample="cubic"), ValueError, "upsample must be"),
    E("ea-inputs-list", lambda: ea().attribute([[1.0]]), TypeError, r"inputs\[0\] must be a torch.Tensor"),
    E("ea-inputs-numpy", lambda: ea().attribute(X.numpy()), TypeError, "inputs must be a tensor"),
    E("ea-empty-batch", lambda: ea().attribute(X[:0]), ValueError, "inputs must have a non-empty batch"),
    E("ea-scalar-input", lambda: ea().attribute(torch.tensor(1.0)), ValueError, "non-empty batch"),
    E(
        "ea-tuple-batch-mismatch",
        lambda: EmbeddingAttribution(CONV).attribute((X_CONV, X_CONV[:2])),
        ValueError,
        r"inputs\[1\] has batch size 2, expected 3",
    ),
    E("ea-int-inputs", lambda: ea().attribute(X.long()), TypeError, r"inputs\[0\] has dtype torch.int64"),
    E("ea-wrong-channels(model)", lambda: ea().attribute(torch.rand(2, 3, 8, 8)), RuntimeError, "channels"),
    E("ea-float64-inputs(model)", lambda: ea().attribute(X.double()), RuntimeError, "double"),
    E(
        "ea-nan-inputs",
        lambda: ea(layer="block2.relu").attribute(X_NAN),
        ValueError,
        r"NaN or infinite.*\[0\]",
    ),
    E(
        "ea-inf-inputs",
        lambda: ea().attribute(X_INF),
        ValueError,
        r"NaN or infinite values for examples \[0\]",
    ),
    E(
        "ea-dims-out-of-range",
        lambda: ea().attribute(X, embedding_dims=[8]),
        ValueError,
        r"embedding_dims \[8\]",
    ),
    E("ea-dims-negative", lambda: ea().attribute(X, embedding_dims=-1), ValueError, r"embedding_dims \[-1\]"),
    E(
        "ea-dims-empty(D=0)",
        lambda: ea().attribute(X, embedding_dims=[]),
        ValueError,
        "embedding_dims is empty",
    ),
    E("ea-dims-float", lambda: ea().attribute(X, embedding_dims=[0.5]), TypeError, "embedding_dims must be"),
    E(
        "ea-model-D=0",
        lambda: EmbeddingAttribution(ZERO_D).attribute(X_LIN[:, :1].repeat(1, 4)),
        ValueError,
        "D = 0",
    ),
    E(
        "ea-layer-not-reached",
        lambda: EmbeddingAttribution(UNUSED, layer="unused").attribute(torch.rand(2, 4)),
        ValueError,
        "layer='unused' was never reached",
    ),
    E(
        "ea-reused-relu",
        lambda: EmbeddingAttribution(REUSED, layer="relu").attribute(X_LIN),
        ValueError,
        "layer='relu' was run 2 times",
    ),
    E(
        "ea-not-differentiable",
        lambda: EmbeddingAttribution(NO_GRAD).attribute(torch.rand(2, 4)),
        ValueError,
        "does not depend differentiably",
    ),
    E(
        "ea-internal-batch-size",
        lambda: ea().attribute(X, internal_batch_size=0),
        ValueError,
        "internal_batch_size",
    ),
    E(
        "ea-model-on-meta(model)",
        lambda: EmbeddingAttribution(META, "embedding").attribute(X),
        RuntimeError,
        "device",
    ),
    E(
        "ea-missing-forward-arg(model)",
        lambda: EmbeddingAttribution(MULTI).attribute(X_MULTI),
        TypeError,
        "scale",
    ),
]


def semantic_errors(cls):
    n = cls.__name__
    return [
        E(
            f"{n}-unfitted-sv",
            lambda: cls(CNN, "block3.pool", SemanticVector(CNN, "block3.pool")),
            ValueError,
            "not fitted",
        ),
        E(f"{n}-sv-type", lambda: cls(CNN, "block3.pool", "masks"), TypeError, "semantic_vectors must be"),
        E(
            f"{n}-mask-1d",
            lambda: cls(CNN, "block3.pool", torch.ones(4)),
            ValueError,
            r"\(num_classes, \*layer_shape\)",
        ),
        E(f"{n}-layer-typo", lambda: cls(CNN, "block3.pol", ONES), ValueError, "layer='block3.pol'"),
        E(f"{n}-sv-other-layer", lambda: cls(CNN, "block2.pool", fitted_sv()), ValueError, "fitted at layer"),
        E(
            f"{n}-concepts-with-tensor",
            lambda: cls(CNN, "block3.pool", ONES, concepts=[0]),
            ValueError,
            "concepts=",
        ),
        E(
            f"{n}-target-missing",
            lambda: cls(CNN, "block3.pool", ONES).attribute(X),
            ValueError,
            "target is required",
        ),
        E(
            f"{n}-target-too-large",
            lambda: cls(CNN, "block3.pool", ONES).attribute(X, target=3),
            ValueError,
            "target out of range",
        ),
        E(
            f"{n}-target-negative",
            lambda: cls(CNN, "block3.pool", ONES).attribute(X, target=-1),
            ValueError,
            "target out of range",
        ),
        E(
            f"{n}-target-float",
            lambda: cls(CNN, "block3.pool", ONES).attribute(X, target=torch.zeros(4)),
            TypeError,
            "target must be integer",
        ),
        E(
            f"{n}-target-count",
            lambda: cls(CNN, "block3.pool", ONES).attribute(X, target=[0, 1, 2]),
            ValueError,
            "target has 3 entries for 4",
        ),
        E(
            f"{n}-mask-shape",
            lambda: cls(CNN, "block3.pool", torch.ones(3, 5)).attribute(X, target=0),
            ValueError,
            "mask shape mismatch",
        ),
        E(
            f"{n}-empty-batch",
            lambda: cls(CNN, "block3.pool", ONES).attribute(X[:0], target=0),
            ValueError,
            "non-empty batch",
        ),
        E(
            f"{n}-int-inputs",
            lambda: cls(CNN, "block3.pool", ONES).attribute(X.long(), target=0),
            TypeError,
            r"inputs\[0\] has dtype",
        ),
        E(
            f"{n}-model-on-meta(model)",
            lambda: cls(META, "block3.pool", ONES).attribute(X, target=0),
            RuntimeError,
            "device",
        ),
        E(
            f"{n}-target-beyond-model-outputs",
            lambda: cls(UNUSED, "relu", torch.ones(5, 3)).attribute(torch.rand(2, 4), target=4),
            ValueError,
            "target out of range: class 4 for a model with 3 outputs",
        ),
        E(
            f"{n}-layer-not-reached",
            lambda: cls(UNUSED, "unused", torch.ones(2, 3)).attribute(torch.rand(2, 4), target=0),
            ValueError,
            "layer was never reached",
        ),
    ]


SEMANTIC_ERRORS = semantic_errors(SemanticGuidedBackprop) + semantic_errors(SemanticGradientInput)


def sv(**kw) -> SemanticVector:
    kw.setdefault("layer", "block3.pool")
    return SemanticVector(kw.pop("model", CNN), **kw)


SV_ERRORS = [
    E("sv-model-not-module", lambda: SemanticVector("net", "x").fit({"a": X}), TypeError, "model must be"),
    E("sv-batch-size", lambda: sv(batch_size=0).fit({"a": X}), ValueError, "batch_size must be"),
    E("sv-layer-typo", lambda: sv(layer="block3.poo").fit({"a": X}), ValueError, "layer='block3.poo'"),
    E("sv-concepts-empty", lambda: sv().fit({}), TypeError, "concepts must be a non-empty dict"),
    E(
        "sv-concept-empty-batch",
        lambda: sv().fit({"a": X[:0]}),
        ValueError,
        r"concepts\['a'\] must have a non-empty",
    ),
    E("sv-concept-str", lambda: sv().fit({"a": "images/"}), TypeError, r"concepts\['a'\] must be"),
    E("sv-labels-float", lambda: sv().fit_from_labels((X, Y.float())), TypeError, "labels must be integer"),
    E(
        "sv-labels-out-of-range",
        lambda: sv().fit_from_labels((X, Y), n_classes=2),
        ValueError,
        r"labels must lie in \[0, 2\)",
    ),
    E("sv-labels-negative", lambda: sv().fit_from_labels((X, Y - 1)), ValueError, "labels must lie in"),
    E(
        "sv-class-without-example",
        lambda: sv().fit_from_labels((X, Y), n_classes=5),
        ValueError,
        r"no examples: \[3, 4\]",
    ),
    E("sv-labels-count", lambda: sv().fit_from_labels((X, Y[:3])), ValueError, "3 labels for a batch of 4"),
    E("sv-no-labels", lambda: sv().fit_from_labels(X), TypeError, "data must be a tuple"),
    E("sv-n-classes", lambda: sv().fit_from_labels((X, Y), n_classes=0), ValueError, "n_classes must be"),
    E(
        "sv-layer-not-reached",
        lambda: sv(model=UNUSED, layer="unused").fit({"a": torch.rand(2, 4)}),
        ValueError,
        "layer='unused' was never reached",
    ),
    E("sv-nan-inputs", lambda: sv().fit_from_labels((X_NAN, Y)), ValueError, "NaN or infinite"),
    E("sv-unfitted-transform", lambda: sv().transform(X), NotFittedError, "not fitted"),
    E("sv-transform-empty", lambda: fitted_sv().transform(X[:0]), ValueError, "non-empty batch"),
    E(
        "sv-transform-channels(model)",
        lambda: fitted_sv().transform(torch.rand(2, 3, 8, 8)),
        RuntimeError,
        "channels",
    ),
    E(
        "sv-unknown-concept",
        lambda: named_sv().concept_index("rond"),
        ValueError,
        "unknown concept 'rond'.*Did you mean: round",
    ),
    E("sv-concept-index-range", lambda: fitted_sv().concept_index(7), ValueError, "out of range"),
    E("sv-mask-threshold", lambda: fitted_sv().masks(1.0), ValueError, "threshold must be"),
    E("sv-rank-k", lambda: fitted_sv().rank(X, 0, k=0), ValueError, "k must be"),
    E("sv-explain-vocabulary", lambda: fitted_sv().explain(X, vocabulary=[]), ValueError, "vocabulary must"),
    E(
        "sv-perturb-targets-count",
        lambda: fitted_sv().perturbation_check(X, [0, 1]),
        ValueError,
        "targets must have one",
    ),
    E(
        "sv-perturb-targets-range",
        lambda: fitted_sv().perturbation_check(X, [0, 1, 2, 5]),
        ValueError,
        "targets must lie in",
    ),
]


def mat(*shape, fill=None):
    g = torch.Generator().manual_seed(3)
    t = torch.rand(*shape, generator=g)
    if fill is not None:
        t[0, 0] = fill
    return t


def cn(**kw) -> CoupledNMFConcepts:
    kw.setdefault("max_iter", 3)
    return CoupledNMFConcepts(kw.pop("n_concepts", 2), **kw)


CNMF_ERRORS = [
    E(
        "cnmf-n-concepts-0",
        lambda: cn(n_concepts=0).fit_matrices([mat(4, 5)]),
        ValueError,
        "n_concepts must be",
    ),
    E(
        "cnmf-lambda-negative",
        lambda: cn(lambda_p=-1.0).fit_matrices([mat(4, 5)]),
        ValueError,
        "lambda_p must be",
    ),
    E("cnmf-tol-nan", lambda: cn(tol=float("nan")).fit_matrices([mat(4, 5)]), ValueError, "tol must be"),
    E("cnmf-solver", lambda: cn(solver="cd").fit_matrices([mat(4, 5)]), ValueError, "solver must be"),
    E("cnmf-max-iter", lambda: cn(max_iter=-1).fit_matrices([mat(4, 5)]), ValueError, "max_iter must be"),
    E("cnmf-pool", lambda: cn(pool="median").fit_matrices([mat(4, 5)]), ValueError, "pool must be"),
    E("cnmf-shift", lambda: cn(shift="mean").fit_matrices([mat(4, 5)]), ValueError, "shift must be"),
    E(
        "cnmf-random-state",
        lambda: cn(random_state="a").fit_matrices([mat(4, 5)]),
        TypeError,
        "random_state must be",
    ),
    E("cnmf-dtype", lambda: cn(dtype=torch.int32).fit_matrices([mat(4, 5)]), ValueError, "dtype must be"),
    E(
        "cnmf-negative-matrix",
        lambda: cn().fit_matrices([], [mat(4, 5) - 0.5]),
        ValueError,
        r"non-negative data, but activation_blocks\[0\]",
    ),
    E(
        "cnmf-nan-matrix",
        lambda: cn().fit_matrices([], [mat(4, 5, fill=float("nan"))]),
        ValueError,
        r"activation_blocks\[0\] contains NaN",
    ),
    E(
        "cnmf-inf-matrix",
        lambda: cn().fit_matrices([mat(4, 5, fill=float("inf"))]),
        ValueError,
        r"pixels\[0\] contains NaN or inf",
    ),
    E(
        "cnmf-1d-matrix",
        lambda: cn().fit_matrices([torch.rand(5)]),
        ValueError,
        r"pixel_blocks\[0\] must be a non-empty 2-D",
    ),
    E(
        "cnmf-empty-matrix(D=0)",
        lambda: cn().fit_matrices([torch.rand(0, 5)]),
        ValueError,
        r"pixel_blocks\[0\] must be a non-empty",
    ),
    E(
        "cnmf-N-mismatch",
        lambda: cn().fit_matrices([mat(4, 5)], [mat(3, 6)]),
        ValueError,
        "same number of examples N=5",
    ),
    E(
        "cnmf-bool-matrix",
        lambda: cn().fit_matrices([torch.ones(4, 5, dtype=torch.bool)]),
        TypeError,
        "real numbers",
    ),
    E(
        "cnmf-complex-matrix",
        lambda: cn().fit_matrices([torch.ones(4, 5, dtype=torch.complex64)]),
        TypeError,
        "real numbers",
    ),
    E("cnmf-single-matrix", lambda: cn().fit_matrices(mat(4, 5)), TypeError, "pixel_blocks must be a list"),
    E("cnmf-no-blocks", lambda: cn().fit_matrices([], []), ValueError, "no data"),
    E(
        "cnmf-groups-length",
        lambda: cn().fit_matrices([mat(4, 5)], groups=[0, 1]),
        ValueError,
        "groups must be 1-D",
    ),
    E(
        "cnmf-group-sparsity-no-groups",
        lambda: cn(group_sparsity=0.1).fit_matrices([mat(4, 5)]),
        ValueError,
        "needs groups",
    ),
    E(
        "cnmf-block-weights-length",
        lambda: cn(block_weights=[1.0, 2.0]).fit_matrices([mat(4, 5)]),
        ValueError,
        "block_weights must hold 1",
    ),
    E(
        "cnmf-block-weights-str",
        lambda: cn(block_weights="equal").fit_matrices([mat(4, 5)]),
        ValueError,
        "block_weights must be",
    ),
    E("cnmf-transform-unfitted", lambda: cn().transform(([mat(4, 5)], [])), NotFittedError, "not fitted"),
    E(
        "cnmf-transform-rows",
        lambda: fitted_cnmf().transform(([mat(3, 2)], [mat(5, 2)])),
        ValueError,
        r"pixels\[0\] has 3 rows, expected 6",
    ),
    E(
        "cnmf-transform-rows-shifted",
        lambda: (
            cn(shift="min").fit_matrices([mat(6, 5) - 0.5], [mat(5, 5)]).transform(([mat(3, 2)], [mat(5, 2)]))
        ),
        ValueError,
        r"pixels\[0\] has 3 rows, expected 6",
    ),
    E(
        "cnmf-transform-blocks",
        lambda: fitted_cnmf().transform(([mat(6, 2)], [])),
        ValueError,
        "transform needs 1 pixel blocks and 1",
    ),
    E(
        "cnmf-transform-nan",
        lambda: fitted_cnmf().transform(([mat(6, 2, fill=float("nan"))], [mat(5, 2)])),
        ValueError,
        "contains NaN",
    ),
    E(
        "cnmf-transform-negative",
        lambda: fitted_cnmf().transform(([mat(6, 2) - 1], [mat(5, 2)])),
        ValueError,
        "non-negative",
    ),
    E(
        "cnmf-transform-inputs-after-matrices",
        lambda: fitted_cnmf().transform(X),
        ValueError,
        "fitted with fit_matrices",
    ),
    E("cnmf-fit-layers-no-model", lambda: cn(layers=["block3.pool"]).fit(X), ValueError, "model is None"),
    E(
        "cnmf-fit-nothing",
        lambda: cn(model=CNN, include_pixels=False).fit(X),
        ValueError,
        "nothing to factorise",
    ),
    E("cnmf-fit-negative-pixels", lambda: cn(model=CNN).fit(X - 0.5), ValueError, r"pixels\[0\] has minimum"),
    E("cnmf-fit-nan-inputs", lambda: cn(model=CNN).fit(X_NAN), ValueError, r"pixels\[0\] contains NaN"),
    E("cnmf-fit-empty-batch", lambda: cn(model=CNN, layers=["block3.pool"]).fit(X[:0]), ValueError, "N > 0"),
    E(
        "cnmf-fit-layer-not-reached",
        lambda: cn(model=UNUSED, layers=["unused"], include_pixels=False).fit(torch.rand(3, 4)),
        ValueError,
        r"layers\[0\]='unused' was never reached",
    ),
    E(
        "cnmf-fit-layer-typo",
        lambda: cn(model=CNN, layers=["block3.poll"]).fit(X),
        ValueError,
        r"layers\[0\]='block3.poll'",
    ),
    E(
        "cnmf-fit-negative-layer",
        lambda: cn(model=CNN, layers=["block2.conv"]).fit(X),
        ValueError,
        "block2.conv has minimum",
    ),
    E(
        "cnmf-top-examples-k",
        lambda: fitted_cnmf().top_examples(11),
        ValueError,
        "k=11 is larger than the 10",
    ),
    E("cnmf-top-examples-0", lambda: fitted_cnmf().top_examples(0), ValueError, "k must be"),
    E(
        "cnmf-neuron-similarity-index",
        lambda: fitted_cnmf().neuron_similarity(5),
        ValueError,
        "layer must be",
    ),
    E(
        "cnmf-neuron-similarity-name",
        lambda: fitted_cnmf().neuron_similarity("fc"),
        ValueError,
        "'fc' was not fitted",
    ),
    E(
        "cnmf-class-scores-length",
        lambda: fitted_cnmf().top_classes([0, 1]),
        ValueError,
        "labels must be 1-D",
    ),
    E(
        "cnmf-factor-images-shape",
        lambda: fitted_cnmf().factor_images((2, 2)),
        ValueError,
        "pixel blocks have 6",
    ),
    E(
        "cnmf-to-captum-N",
        lambda: fitted_cnmf().to_captum_concepts(X, k=2),
        ValueError,
        "the 10 fitted examples",
    ),
    E(
        "cnmf-neighbors-k",
        lambda: fitted_cnmf().neighbor_concepts(k=10),
        ValueError,
        "k=10 is larger than the 9",
    ),
]


_TMP = tempfile.TemporaryDirectory(prefix="captum_concepts_bad_inputs_")


def ooc(**kw) -> CoupledNMFConcepts:
    settings = kw.pop("settings", None) or OutOfCore(directory=_TMP.name)
    return cn(model=CNN, layers=["block3.pool"], out_of_core=settings, **kw)


def store(rows=(3, 2), **kw) -> ActivationStore:
    return ActivationStore(os.path.join(_TMP.name, "store.bin"), list(rows), **kw)


def _empty_store_fit():
    return cn().fit_store(store().close())


OUT_OF_CORE_ERRORS = [
    E(
        "ooc-budget-string",
        lambda: ooc(settings=OutOfCore("lots")).fit(X),
        ValueError,
        "memory_budget must be",
    ),
    E("ooc-budget-negative", lambda: ooc(settings=OutOfCore(-5)).fit(X), ValueError, "memory_budget must be"),
    E(
        "ooc-storage-dtype",
        lambda: ooc(settings=OutOfCore(storage_dtype=torch.int8)).fit(X),
        ValueError,
        "storage_dtype must be",
    ),
    E(
        "ooc-not-settings",
        lambda: cn(out_of_core="1GB").fit(X),
        TypeError,
        "out_of_core must be an OutOfCore",
    ),
    E(
        "ooc-budget-too-small",
        lambda: ooc(settings=OutOfCore(100, directory=_TMP.name)).fit(X),
        ValueError,
        "memory_budget=100 bytes is too small",
    ),
    E("ooc-nan-inputs", lambda: ooc().fit(X_NAN), ValueError, "NaN or infinite"),
    E("ooc-negative-pixels", lambda: ooc().fit(X - 1), ValueError, r"pixels\[0\] has minimum"),
    E(
        "ooc-fit-store-type",
        lambda: cn().fit_store("acts.bin"),
        TypeError,
        "store must be an ActivationStore",
    ),
    E("store-block-rows", lambda: store(rows=(0, 3)), ValueError, r"block_rows\[0\] must be an int >= 1"),
    E("store-dtype", lambda: store(storage_dtype=torch.int8), ValueError, "storage_dtype must be"),
    E(
        "store-append-batch-mismatch",
        lambda: store().append([torch.rand(4, 3), torch.rand(5, 2)]),
        ValueError,
        r"block 1 must be \(B, 2\)",
    ),
    E("store-append-count", lambda: store().append([torch.rand(4, 3)]), ValueError, "append needs 2 blocks"),
    E("ooc-fit-empty-store", _empty_store_fit, ValueError, "store holds no examples"),
]


def const_explainer(t, **kw):
    return torch.zeros(t.shape[0], 8, 8)


def rand_explainer(t, **kw):
    return torch.rand(t.shape[0], 8, 8, generator=torch.Generator().manual_seed(t.shape[0]))


METRIC_ERRORS = [
    E("ns-func-not-callable", lambda: noise_score(5, X), TypeError, "explanation_func must be"),
    E("ns-n-noise-0", lambda: noise_score(rand_explainer, X, n_noise=0), ValueError, "n_noise must be"),
    E(
        "ns-noise-shape",
        lambda: noise_score(rand_explainer, X, noise_func=torch.rand(2, 1, 8, 8)),
        ValueError,
        "noise_func must have the shape",
    ),
    E(
        "ns-noise-tensor-2-draws",
        lambda: noise_score(rand_explainer, X, noise_func=X, n_noise=2),
        ValueError,
        "fixed noise tensor",
    ),
    E(
        "ns-noise-func-shape",
        lambda: noise_score(rand_explainer, X, noise_func=lambda x: x[:1]),
        ValueError,
        r"noise_func\(inputs\)",
    ),
    E(
        "ns-map-nan",
        lambda: noise_score(lambda t: torch.full((t.shape[0], 4), float("nan")), X),
        ValueError,
        "NaN or infinite",
    ),
    E("ns-map-batch", lambda: noise_score(lambda t: torch.rand(1, 4), X), ValueError, "one map per example"),
    E("ns-empty-batch", lambda: noise_score(rand_explainer, X[:0]), ValueError, "non-empty batch"),
    E(
        "ns-max-examples",
        lambda: noise_score(rand_explainer, X, max_examples_per_batch=0),
        ValueError,
        "max_examples_per_batch",
    ),
    E(
        "ns-differentiable",
        lambda: noise_score(rand_explainer, X, differentiable="yes"),
        TypeError,
        "differentiable must be",
    ),
    E("ns-ea-nan-inputs", lambda: noise_score(ea(), X_NAN), ValueError, "NaN or infinite"),
    E(
        "nb-tensor-noise",
        lambda: noise_benchmark(rand_explainer, X, noise_func=X),
        TypeError,
        "must be None or a callable",
    ),
    E("nb-n-draws", lambda: noise_benchmark(rand_explainer, X, n_draws=0), ValueError, "n_draws must be"),
    E(
        "vs-maps-without-D",
        lambda: variance_score(lambda t: torch.rand(t.shape[0], 5), X),
        ValueError,
        r"\(N, D, \.\.\.\)",
    ),
    E("vs-threshold", lambda: variance_score(ea(), X, threshold=1.0), ValueError, "threshold must be"),
    E(
        "vs-threshold-differentiable",
        lambda: variance_score(ea(), X, threshold=0.5, differentiable=True),
        ValueError,
        "threshold binarises",
    ),
    E("drift-eps-negative", lambda: drift_score(rand_explainer, X, [-0.1]), ValueError, "epsilons must be"),
    E("drift-eps-empty", lambda: drift_score(rand_explainer, X, []), ValueError, "epsilons must be"),
    E(
        "drift-eps-nan",
        lambda: drift_score(rand_explainer, X, [float("nan")]),
        ValueError,
        "epsilons must be",
    ),
    E(
        "drift-clip-range",
        lambda: drift_score(rand_explainer, X, [0.1], clip_range="image"),
        ValueError,
        "clip_range must be",
    ),
    E(
        "drift-constant-maps",
        lambda: drift_score(const_explainer, X, [0.1]),
        ValueError,
        "noise score of the clean inputs is 0",
    ),
    E(
        "curve-score",
        lambda: score_curve(CNN, "embedding", ["block2.relu"], X, score="fidelity"),
        ValueError,
        "score must be",
    ),
    E("curve-layers-empty", lambda: score_curve(CNN, "embedding", [], X), ValueError, "layers is empty"),
    E(
        "curve-layer-type-absent",
        lambda: score_curve(CNN, "embedding", nn.LSTM, X),
        ValueError,
        "no submodule of this type",
    ),
    E(
        "curve-threshold-noise",
        lambda: score_curve(CNN, "embedding", ["block2.relu"], X, threshold=0.5),
        ValueError,
        "threshold applies",
    ),
    E(
        "curve-layer-typo",
        lambda: score_curve(CNN, "embedding", ["block2.rel"], X),
        ValueError,
        r"layer\[0\]='block2.rel'",
    ),
    E(
        "curve-n-noise",
        lambda: score_curve(CNN, "embedding", ["block2.relu"], X, n_noise=0),
        ValueError,
        "n_noise must be",
    ),
]

MAPS = torch.rand(2, 6, 6, generator=G)
BOXES = torch.tensor([[0, 0, 3, 3], [2, 2, 6, 6]])
POINTING_ERRORS = [
    E(
        "pg-not-tensor",
        lambda: pointing_game(MAPS.numpy(), boxes=BOXES),
        TypeError,
        "attributions must be a tensor",
    ),
    E(
        "pg-2d-maps",
        lambda: pointing_game(MAPS.flatten(1), boxes=BOXES),
        ValueError,
        "attributions must have shape",
    ),
    E(
        "pg-empty-batch",
        lambda: pointing_game(MAPS[:0], boxes=BOXES[:0]),
        ValueError,
        "attributions must have shape",
    ),
    E(
        "pg-boxes-and-masks",
        lambda: pointing_game(MAPS, boxes=BOXES, masks=MAPS > 0),
        ValueError,
        "exactly one of boxes",
    ),
    E("pg-boxes-shape", lambda: pointing_game(MAPS, boxes=BOXES[:, :3]), ValueError, "boxes must have shape"),
    E(
        "pg-masks-shape",
        lambda: pointing_game(MAPS, masks=torch.ones(2, 5, 5)),
        ValueError,
        "masks must have shape",
    ),
    E("pg-energy", lambda: pointing_game(MAPS, boxes=BOXES, energy=1.5), ValueError, "energy must lie in"),
    E(
        "pg-hit-fraction",
        lambda: pointing_game(MAPS, boxes=BOXES, hit_fraction=0.0),
        ValueError,
        "hit_fraction must be",
    ),
    E(
        "pg-tolerance",
        lambda: pointing_game(MAPS, boxes=BOXES, tolerance=-1),
        ValueError,
        "tolerance must be",
    ),
    E(
        "pg-on-empty",
        lambda: pointing_game(MAPS, boxes=BOXES, on_empty="hit"),
        ValueError,
        "on_empty must be",
    ),
    E(
        "pg-empty-box",
        lambda: pointing_game(MAPS, boxes=torch.tensor([[0, 0, 0, 3], [0, 0, 2, 2]])),
        ValueError,
        r"empty target region.*\[0\]",
    ),
    E(
        "pg-nan-map",
        lambda: pointing_game(torch.full((2, 6, 6), float("nan")), boxes=BOXES),
        ValueError,
        "NaN or infinite",
    ),
    E(
        "pg-curve-all-empty",
        lambda: pointing_game_curve(MAPS, boxes=torch.zeros(2, 4, dtype=torch.long), on_empty="nan"),
        ValueError,
        "every example has an empty",
    ),
]

VIS_ERRORS = [
    E(
        "vis-grid-none",
        lambda: visualize_attribution_grid(None, use_pyplot=False),
        TypeError,
        "attributions must be",
    ),
    E(
        "vis-grid-3d",
        lambda: visualize_attribution_grid(MAPS, use_pyplot=False),
        ValueError,
        "attributions must have shape",
    ),
    E(
        "vis-curve-2d",
        lambda: visualize_score_curve({"a": MAPS}, use_pyplot=False),
        ValueError,
        "scores must hold 1-D",
    ),
    E(
        "vis-similarity-not-square",
        lambda: visualize_similarity_matrices([torch.rand(2, 3)], use_pyplot=False),
        ValueError,
        "must be square",
    ),
    E(
        "vis-relevance-none",
        lambda: visualize_relevance_matrix(None, use_pyplot=False),
        TypeError,
        "relevance must be",
    ),
]

ERROR_CASES = (
    EA_ERRORS
    + SEMANTIC_ERRORS
    + SV_ERRORS
    + CNMF_ERRORS
    + OUT_OF_CORE_ERRORS
    + METRIC_ERRORS
    + POINTING_ERRORS
    + VIS_ERRORS
)


@pytest.fixture
def untouched():
    """Every model and input comes out of a case as it went in."""
    states = [model_state(m) for m in ALL_MODELS]
    inputs = [t.clone() for t in ALL_INPUTS]
    yield
    for before, m in zip(states, ALL_MODELS):
        assert_same_state(before, m)
    for before, t in zip(inputs, ALL_INPUTS):
        assert torch.equal(before, t) or (torch.isnan(before).any() and before.isnan().eq(t.isnan()).all())


@pytest.mark.parametrize("fn, exc, match", ERROR_CASES)
def test_clear_error(fn, exc, match, untouched):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc, match=match):
            fn()


# ---------------------------------------------------------------------- documented results
def R(case_id, fn):
    return pytest.param(fn, id=case_id)


def _ea_d1_equals_captum():
    head = OneDimHead(CNN).eval()
    ours = EmbeddingAttribution(head, embedding_aggregator="mean").attribute(X)
    ref = Saliency(head).attribute(X, target=0, abs=False)[:, 0]
    torch.testing.assert_close(ours, ref)
    picked = EmbeddingAttribution(CNN, "embedding_relu", embedding_aggregator="mean")
    torch.testing.assert_close(picked.attribute(X, embedding_dims=[3]), ref)


def _ea_d1_var_is_zero():
    assert torch.equal(ea().attribute(X, embedding_dims=3), torch.zeros(4, 8, 8))


def _ea_inplace_relu():
    CONV_INPLACE.load_state_dict(CONV.state_dict())
    for layer in ("conv1", "relu1", None):
        for method in ("gradient", "activation_gradient"):
            a = EmbeddingAttribution(CONV, layer=layer, method=method).attribute(X_CONV)
            b = EmbeddingAttribution(CONV_INPLACE, layer=layer, method=method).attribute(X_CONV)
            assert torch.equal(a, b), (layer, method)


def _ea_train_mode():
    DROPOUT.train()
    try:
        with pytest.warns(UserWarning, match="training mode"):
            got = EmbeddingAttribution(DROPOUT, layer="relu").attribute(X_LIN[:, :1].repeat(1, 4))
        assert DROPOUT.training and DROPOUT.drop.training
    finally:
        DROPOUT.eval()
    want = EmbeddingAttribution(DROPOUT, layer="relu").attribute(X_LIN[:, :1].repeat(1, 4))
    assert torch.equal(got, want)  # eval-mode explanation: dropout off


def _ea_extra_forward_args():
    got = EmbeddingAttribution(MULTI).attribute(X_MULTI, additional_forward_args=(3,))
    want = EmbeddingAttribution(ScaleBound(MULTI, 3).eval()).attribute(X_MULTI)
    assert isinstance(got, tuple) and all(torch.equal(a, b) for a, b in zip(got, want))


def _ea_constant_embedding():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).eval()
    nn.init.zeros_(model[1].weight)
    assert torch.equal(EmbeddingAttribution(model).attribute(X), torch.zeros(4, 8, 8))


def _ea_reused_relu_as_source_via_input():
    # a reused module is fine when it is neither the source nor the embedding layer
    out = EmbeddingAttribution(REUSED, layer="lin2", embedding_aggregator="mean").attribute(X_LIN)
    assert out.shape == (5,) and torch.isfinite(out).all()


def _semantic_equals_captum_reused_relu():
    masks = torch.ones(2, 2)
    got = SemanticGuidedBackprop(REUSED, "lin1", masks).attribute(X_LIN, target=1)
    assert torch.equal(got, GuidedBackprop(REUSED).attribute(X_LIN, target=1))


def _semantic_inplace_relu():
    CONV_INPLACE.load_state_dict(CONV.state_dict())
    masks = (torch.rand(4, 2, 2, 2, generator=torch.Generator().manual_seed(5)) > 0.3).float()
    for cls in (SemanticGuidedBackprop, SemanticGradientInput):
        a = cls(CONV, "conv1", masks).attribute(X_CONV, target=[0, 1, 3])
        b = cls(CONV_INPLACE, "conv1", masks).attribute(X_CONV, target=[0, 1, 3])
        assert torch.equal(a, b), cls.__name__
    ones = torch.ones(4, 2, 2, 2)
    ref = GuidedBackprop(CONV_INPLACE).attribute(X_CONV.clone(), target=2)
    assert torch.equal(SemanticGuidedBackprop(CONV_INPLACE, "conv1", ones).attribute(X_CONV, target=2), ref)


def _semantic_extra_args():
    masks = torch.ones(2, 4)
    got = SemanticGradientInput(MULTI, "model.relu", masks).attribute(
        X_MULTI, target=1, additional_forward_args=(2,)
    )
    want = InputXGradient(MULTI).attribute(X_MULTI, target=1, additional_forward_args=(2,))
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def _semantic_train_mode():
    CNN.train()
    try:
        with pytest.warns(UserWarning, match="training mode"):
            SemanticGuidedBackprop(CNN, "block3.pool", ONES).attribute(X, target=0)
        assert CNN.training
    finally:
        CNN.eval()


def _semantic_nan_does_not_leak():
    for cls in (SemanticGuidedBackprop, SemanticGradientInput):
        both = cls(CNN, "block3.pool", fitted_sv()).attribute(X_NAN, target=[0, 1, 2, 0])
        clean = cls(CNN, "block3.pool", fitted_sv()).attribute(X[1:], target=[1, 2, 0])
        torch.testing.assert_close(both[1:], clean, msg=cls.__name__)


def _sv_constant_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU()).eval()
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)
    est = SemanticVector(model, "2").fit({"a": X})
    assert torch.equal(est.vectors_, torch.zeros(1, 6)) and float(est.diversity_[0]) == 1.0
    assert torch.equal(est.similarity(X), torch.zeros(4, 1))


def _sv_one_unit_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 1), nn.ReLU()).eval()
    est = SemanticVector(model, "2").fit_from_labels((X, Y))
    assert est.vectors_.shape == (3, 1) and set(est.vectors_.flatten().tolist()) <= {0.0, 1.0}


def _sv_train_mode():
    DROPOUT.train()
    try:
        with pytest.warns(UserWarning, match="training mode"):
            a = SemanticVector(DROPOUT, "drop").fit({"a": torch.rand(8, 4, generator=G)})
        assert DROPOUT.training
    finally:
        DROPOUT.eval()
    assert torch.equal(a.transform(torch.ones(2, 4)), DROPOUT.relu(DROPOUT.lin(torch.ones(2, 4))).detach())


def _sv_inplace_relu_after_layer():
    CONV_INPLACE.load_state_dict(CONV.state_dict())
    a = SemanticVector(CONV, "conv1").fit({"c": X_CONV})
    b = SemanticVector(CONV_INPLACE, "conv1").fit({"c": X_CONV})
    assert torch.equal(a.vectors_, b.vectors_)
    assert torch.equal(b.transform(X_CONV), CONV.conv1(X_CONV).flatten(1).detach())


def _sv_reused_module_first_call():
    est = SemanticVector(REUSED, "relu").fit({"a": X_LIN})
    want = REUSED.relu(REUSED.lin1(X_LIN)).detach()
    assert torch.equal(est.transform(X_LIN), want)  # documented: the first call is captured


def _sv_extra_forward_args():
    est = SemanticVector(MULTI, "model.linear1").fit({"a": X_MULTI}, additional_forward_args=(2,))
    want = MULTI.model.linear1(MULTI.model.linear0(2 * sum(X_MULTI))).detach()
    assert torch.equal(est.transform(X_MULTI, additional_forward_args=(2,)), want)


def _sv_nan_at_transform():
    sim = fitted_sv().similarity(X_NAN)
    assert torch.isnan(sim[0]).all() and torch.equal(sim[1:], fitted_sv().similarity(X[1:]))


def _cnmf_all_zero():
    est = cn(max_iter=5).fit_matrices([torch.zeros(4, 6)])
    assert torch.isfinite(est.example_factors_).all() and float(est.example_factors_.abs().max()) < 1e-6


def _cnmf_zero_rows_and_columns():
    for solver in ("mu", "hals"):
        data = mat(6, 8)
        data[1] = 0
        data[:, 2] = 0
        est = cn(n_concepts=3, max_iter=50, solver=solver).fit_matrices([data])
        assert torch.isfinite(est.example_factors_).all()
        assert float(est.example_factors_[:, 2].max()) < 1e-6, solver  # a zero example gets no concept
        recon = est.pixel_factors_[0] @ est.example_factors_
        assert float(recon[1].max()) < 1e-3, solver  # a zero pixel is not reconstructed


def _cnmf_one_row_and_one_example():
    a = cn(n_concepts=1, max_iter=20).fit_matrices([mat(1, 5)])
    b = cn(n_concepts=2, max_iter=20).fit_matrices([mat(4, 1)])
    assert a.example_factors_.shape == (1, 5) and b.example_factors_.shape == (2, 1)
    assert torch.isfinite(a.example_factors_).all() and torch.isfinite(b.example_factors_).all()


def _cnmf_rank_larger_than_data():
    est = cn(n_concepts=10, max_iter=30, normalize_columns=False).fit_matrices([mat(2, 3)])
    assert torch.isfinite(est.example_factors_).all()
    loss = est.loss_history_
    # non-increasing up to float32 cancellation of the trace-identity objective near 0
    assert all(b <= a + 1e-6 * loss[0] for a, b in zip(loss, loss[1:]))
    assert loss[-1] < 1e-3 * loss[0]  # d > rank: an exact fit exists


def _cnmf_shift_min():
    data = mat(4, 6) - 0.5
    est = cn(shift="min", max_iter=5).fit_matrices([], [data])
    assert torch.allclose(est.shift_[0], data.amin(dim=1).clamp(max=0))


def _cnmf_numpy_equals_tensor():
    a = cn(max_iter=5).fit_matrices([mat(4, 6).numpy()])
    b = cn(max_iter=5).fit_matrices([mat(4, 6)])
    assert torch.equal(a.example_factors_, b.example_factors_)


def _cnmf_train_mode_and_inplace():
    CONV_INPLACE.load_state_dict(CONV.state_dict())
    CONV_INPLACE.train()
    try:
        with pytest.warns(UserWarning, match="training mode"):
            a = cn(model=CONV_INPLACE, layers=["relu1"], max_iter=5).fit(X_CONV / 20)
        assert CONV_INPLACE.training
    finally:
        CONV_INPLACE.eval()
    b = cn(model=CONV, layers=["relu1"], max_iter=5).fit(X_CONV / 20)
    assert torch.equal(a.example_factors_, b.example_factors_)


def _cnmf_model_device():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: CoupledNMFConcepts moves batches to the model's device (documented)")
    model = copy.deepcopy(CNN).cuda()
    est = cn(model=model, layers=["block3.pool"]).fit(X)  # CPU inputs, CUDA model
    assert est.example_factors_.is_cuda


def _distributed_without_process_group():
    a = cn(max_iter=5, distributed=True).fit_matrices([mat(4, 6)])
    b = cn(max_iter=5).fit_matrices([mat(4, 6)])
    assert torch.equal(a.example_factors_, b.example_factors_)  # documented: a plain fit
    sv_a = SemanticVector(CNN, "block3.pool", distributed=True).fit_from_labels((X, Y))
    assert torch.equal(sv_a.vectors_, fitted_sv().vectors_)


def _ns_constant_maps_are_zero():
    assert torch.equal(noise_score(const_explainer, X), torch.zeros(4))


def _vs_one_dim_is_zero():
    assert torch.equal(variance_score(ea(), X, embedding_dims=[2]), torch.zeros(4))


def _pg_empty_box_nan():
    got = pointing_game(MAPS, boxes=torch.tensor([[0, 0, 0, 3], [0, 0, 6, 6]]), on_empty="nan")
    assert torch.isnan(got[0]) and got[1] == 1.0


def _pg_zero_map_is_a_miss():
    assert torch.equal(pointing_game(torch.zeros(2, 6, 6), boxes=BOXES), torch.zeros(2))


def _pg_constant_map():
    full = torch.tensor([[0, 0, 6, 6], [0, 0, 6, 6]])
    assert torch.equal(pointing_game(torch.ones(2, 6, 6), boxes=BOXES), torch.zeros(2))
    assert torch.equal(pointing_game(torch.ones(2, 6, 6), boxes=full), torch.ones(2))


RESULT_CASES = [
    R("ea-D=1-equals-captum-saliency", _ea_d1_equals_captum),
    R("ea-D=1-var-is-zero", _ea_d1_var_is_zero),
    R("ea-inplace-relu", _ea_inplace_relu),
    R("ea-train-mode", _ea_train_mode),
    R("ea-extra-forward-args", _ea_extra_forward_args),
    R("ea-constant-embedding", _ea_constant_embedding),
    R("ea-reused-module-elsewhere", _ea_reused_relu_as_source_via_input),
    R("sgb-reused-relu-equals-captum", _semantic_equals_captum_reused_relu),
    R("semantic-inplace-relu", _semantic_inplace_relu),
    R("sgi-extra-forward-args-equals-captum", _semantic_extra_args),
    R("semantic-train-mode", _semantic_train_mode),
    R("semantic-nan-example-isolated", _semantic_nan_does_not_leak),
    R("sv-constant-layer", _sv_constant_layer),
    R("sv-one-unit-layer(D=1)", _sv_one_unit_layer),
    R("sv-train-mode", _sv_train_mode),
    R("sv-inplace-relu-after-layer", _sv_inplace_relu_after_layer),
    R("sv-reused-module-first-call", _sv_reused_module_first_call),
    R("sv-extra-forward-args", _sv_extra_forward_args),
    R("sv-nan-at-transform", _sv_nan_at_transform),
    R("cnmf-all-zero-matrix", _cnmf_all_zero),
    R("cnmf-zero-rows-and-columns", _cnmf_zero_rows_and_columns),
    R("cnmf-one-row-one-example", _cnmf_one_row_and_one_example),
    R("cnmf-rank-larger-than-data", _cnmf_rank_larger_than_data),
    R("cnmf-shift-min", _cnmf_shift_min),
    R("cnmf-numpy-equals-tensor", _cnmf_numpy_equals_tensor),
    R("cnmf-train-mode-inplace-relu", _cnmf_train_mode_and_inplace),
    R("cnmf-model-on-cuda-inputs-on-cpu", _cnmf_model_device),
    R("distributed-flag-without-process-group", _distributed_without_process_group),
    R("ns-constant-maps", _ns_constant_maps_are_zero),
    R("vs-D=1", _vs_one_dim_is_zero),
    R("pg-empty-box-nan", _pg_empty_box_nan),
    R("pg-zero-map-miss", _pg_zero_map_is_a_miss),
    R("pg-constant-map", _pg_constant_map),
]


@pytest.mark.parametrize("fn", RESULT_CASES)
def test_documented_result(fn, untouched):
    fn()


def test_case_counts_match_the_docstring():
    doc = __doc__
    assert f"ERROR_CASES: {len(ERROR_CASES)} cases" in doc, len(ERROR_CASES)
    assert f"RESULT_CASES: {len(RESULT_CASES)} cases" in doc, len(RESULT_CASES)
    ids = [p.id for p in ERROR_CASES + RESULT_CASES]
    assert len(ids) == len(set(ids))
    assert re.search(r"Hypothesis properties: 4", doc)


# ---------------------------------------------------------------------- hypothesis properties
_FAST = settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))


@_FAST
@given(
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(1, 6),
    st.sampled_from(["random", "constant", "zeros", "spiky", "negative"]),
    st.integers(0, 2**16),
)
def test_scores_stay_in_their_bounds(n, h, w, kind, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 3, h, w)
    maps = {
        "random": torch.randn(*shape, generator=g),
        "constant": torch.full(shape, 2.5),
        "zeros": torch.zeros(shape),
        "spiky": torch.zeros(shape).index_fill_(3, torch.tensor([0]), 1e6),
        "negative": -torch.rand(*shape, generator=g),
    }[kind]
    inputs = torch.rand(n, 1, generator=g)

    def per_dim(t, **kw):  # (N', D, H, W): the inputs' copies reuse the maps
        return maps.repeat(t.shape[0] // n, 1, 1, 1)

    ns = noise_score(lambda t: per_dim(t).sum(1), inputs, noise_func=lambda x: torch.rand(n, 1, generator=g))
    vs = variance_score(per_dim, inputs)
    assert ns.shape == (n,) and vs.shape == (n,)
    assert torch.all((ns >= 0) & (ns <= 1)) and torch.all((vs >= 0) & (vs <= 0.25 + 1e-6))
    if kind in ("constant", "zeros"):
        assert torch.equal(vs, torch.zeros(n))


@_FAST
@given(st.integers(1, 4), st.integers(2, 8), st.integers(2, 8), st.floats(0, 1), st.integers(0, 2**16))
def test_pointing_game_on_arbitrary_maps(n, h, w, energy, seed):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, h, w, generator=g)
    x0 = torch.randint(0, w, (n,), generator=g)
    y0 = torch.randint(0, h, (n,), generator=g)
    boxes = torch.stack([x0, y0, x0 + 1 + torch.randint(0, w, (n,), generator=g), y0 + 2], dim=1)
    hits = pointing_game(maps, boxes=boxes, energy=energy)
    assert hits.shape == (n,) and set(hits.tolist()) <= {0.0, 1.0}
    classic = pointing_game(maps, boxes=boxes, energy=0.0)
    region = torch.zeros(n, h, w, dtype=torch.bool)
    for i, (a, b, c, d) in enumerate(boxes.tolist()):
        region[i, b:d, a:c] = True
    best = maps.flatten(1).argmax(1)
    expected = [float(region[i].flatten()[best[i]]) if maps[i].max() > 0 else 0.0 for i in range(n)]
    assert classic.tolist() == expected  # random maps have a unique maximum


@_FAST
@given(
    st.integers(1, 5),
    st.integers(1, 7),
    st.integers(1, 4),
    st.sampled_from(["mu", "hals"]),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_cnmf_on_arbitrary_non_negative_data(rows, n, d, solver, sparse, seed):
    g = torch.Generator().manual_seed(seed)
    data = torch.rand(rows, n, generator=g)
    if sparse:
        data = data * (torch.rand(rows, n, generator=g) > 0.6)  # zero rows / columns happen
    est = CoupledNMFConcepts(d, solver=solver, max_iter=15, random_state=seed).fit_matrices([data])
    F = est.example_factors_
    assert F.shape == (d, n) and torch.isfinite(F).all() and (F >= 0).all()
    assert all(np.isfinite(est.loss_history_))
    assert torch.isfinite(est.transform(([data], []))).all()


@_FAST
@given(
    st.integers(1, 3), st.sampled_from(["gradient", "activation_gradient", "gradcam"]), st.integers(0, 2**16)
)
def test_embedding_attribution_finite_on_finite_inputs(n, method, seed):
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 4 - 2
    out = EmbeddingAttribution(CNN, "embedding", layer="block2.relu", method=method).attribute(x)
    assert out.shape == (n, 8, 8) and torch.isfinite(out).all()
