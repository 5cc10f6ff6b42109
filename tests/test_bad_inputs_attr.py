"""Bad inputs for the attributions: EmbeddingAttribution, SemanticGuidedBackprop, SemanticGradientInput,
SimilarityAttribution.

Error cases that must raise a clear error naming the argument (or, for inputs the model cannot take,
the model's own PyTorch error, unchanged), cases with a documented correct result (D = 1 equals
Captum, in-place and reused ReLUs equal the plain model, train-mode models explained in eval mode and
left in train mode, extra forward arguments, constant embeddings, NaN confined to its example) and a
hypothesis property (embedding attributions finite on finite inputs). The models and inputs are
checked untouched after every case (``untouched`` in ``tests/conftest.py``).
"""

from __future__ import annotations

import pytest
import torch
from _bad_inputs_common import (
    CNN,
    CONV,
    CONV_INPLACE,
    DROPOUT,
    FAST,
    META,
    MULTI,
    NO_GRAD,
    REUSED,
    UNUSED,
    X_CONV,
    X_INF,
    X_LIN,
    X_MULTI,
    X_NAN,
    ZERO_D,
    E,
    ResultCases,
    X,
    clear_error_test,
    documented_result_test,
    ea,
    fitted_sv,
)
from _kernels import assert_matches
from captum.attr import GuidedBackprop, InputXGradient, Saliency
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from captum_concepts.attr import (
    EmbeddingAttribution,
    SemanticGradientInput,
    SemanticGuidedBackprop,
    SimilarityAttribution,
)
from captum_concepts.concept import SemanticVector

RESULT_CASES = ResultCases()


class OneDimHead(nn.Module):
    """DigitsCNN with the embedding reduced to its dimension 1 (for Captum equality at D = 1).

    Dimension 1 is live on ``X`` (dimension 3, used before, is 0 after the ReLU for all of ``X``: the
    comparison was between two all-zero maps).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.embed(x)[:, 1:2]


class ScaleBound(nn.Module):
    """``BasicModel_MultiLayer_MultiInput`` with its extra ``scale`` argument fixed."""

    def __init__(self, model: nn.Module, scale: int) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x1, x2, x3):
        return self.model(x1, x2, x3, self.scale)


ONES = torch.ones(3, 16, 2, 2)  # all-ones semantic masks for block3.pool, 3 classes


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


def sa(**kw) -> SimilarityAttribution:
    kw.setdefault("embedding_layer", "embedding")
    return SimilarityAttribution(CNN, **kw)


def _inference_mode(fn):
    with torch.inference_mode():
        return fn()


def _inference_clone(x):
    with torch.inference_mode():
        return x.clone()


SIMILARITY_ERRORS = [
    # the shared option check: the options listed one by one, the value with its type
    E("sa-method", lambda: sa(method="lrp"), ValueError, "method must be one of 'gradient', .*\\(str\\)"),
    E("sa-similarity", lambda: sa(similarity=2), TypeError, "similarity must be one of 'cosine', 'dot'"),
    E(
        "sa-attribute-inference-mode",
        lambda: _inference_mode(lambda: sa(layer="block2.relu").attribute(X[:2], X[2:])),
        RuntimeError,
        "SimilarityAttribution.attribute needs gradients, but it was called inside torch.inference_mode",
    ),
    E(
        "sa-correspondence-inference-mode",
        lambda: _inference_mode(lambda: sa(layer="block2.relu").correspondence(X[:2], X[2:])),
        RuntimeError,
        "inside torch.inference_mode",
    ),
    E(
        "sa-inference-tensor",
        lambda: sa().per_dim_maps(X[:2], _inference_clone(X[2:])),
        RuntimeError,
        "inputs_b is an inference tensor",
    ),
    E(
        "sa-tower-transforms-shared-encoder",
        lambda: sa(tower_reshape_transforms=(None, None)),
        ValueError,
        "tower_reshape_transforms needs two towers",
    ),
]
ERROR_CASES = EA_ERRORS + SEMANTIC_ERRORS + SIMILARITY_ERRORS
test_clear_error = clear_error_test(ERROR_CASES)


# ---------------------------------------------------------------------- documented results
@RESULT_CASES.add("ea-D=1-equals-captum-saliency")
def _ea_d1_equals_captum():
    head = OneDimHead(CNN).eval()
    ours = EmbeddingAttribution(head, embedding_aggregator="mean").attribute(X)
    ref = Saliency(head).attribute(X, target=0, abs=False)[:, 0]
    assert_matches(ours, ref)
    picked = EmbeddingAttribution(CNN, "embedding_relu", embedding_aggregator="mean")
    assert_matches(picked.attribute(X, embedding_dims=[1]), ref)


@RESULT_CASES.add("ea-D=1-var-is-zero")
def _ea_d1_var_is_zero():
    assert torch.equal(ea().attribute(X, embedding_dims=3), torch.zeros(4, 8, 8))


@RESULT_CASES.add("ea-inplace-relu")
def _ea_inplace_relu():
    CONV_INPLACE.load_state_dict(CONV.state_dict())
    for layer in ("conv1", "relu1", None):
        for method in ("gradient", "activation_gradient"):
            a = EmbeddingAttribution(CONV, layer=layer, method=method).attribute(X_CONV)
            b = EmbeddingAttribution(CONV_INPLACE, layer=layer, method=method).attribute(X_CONV)
            assert torch.equal(a, b), (layer, method)


@RESULT_CASES.add("ea-train-mode")
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


@RESULT_CASES.add("ea-extra-forward-args")
def _ea_extra_forward_args():
    got = EmbeddingAttribution(MULTI).attribute(X_MULTI, additional_forward_args=(3,))
    want = EmbeddingAttribution(ScaleBound(MULTI, 3).eval()).attribute(X_MULTI)
    assert isinstance(got, tuple) and all(torch.equal(a, b) for a, b in zip(got, want))


@RESULT_CASES.add("ea-constant-embedding")
def _ea_constant_embedding():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).eval()
    nn.init.zeros_(model[1].weight)
    assert torch.equal(EmbeddingAttribution(model).attribute(X), torch.zeros(4, 8, 8))


@RESULT_CASES.add("ea-reused-module-elsewhere")
def _ea_reused_relu_as_source_via_input():
    # a reused module is fine when it is neither the source nor the embedding layer
    out = EmbeddingAttribution(REUSED, layer="lin2", embedding_aggregator="mean").attribute(X_LIN)
    assert out.shape == (5,) and torch.isfinite(out).all()


@RESULT_CASES.add("sgb-reused-relu-equals-captum")
def _semantic_equals_captum_reused_relu():
    masks = torch.ones(2, 2)
    # target 0: output 1 is 0 after the final ReLU for all of X_LIN (an all-zero comparison before)
    got = SemanticGuidedBackprop(REUSED, "lin1", masks).attribute(X_LIN, target=0)
    assert_matches(got, GuidedBackprop(REUSED).attribute(X_LIN, target=0))  # Captum's own code path


@RESULT_CASES.add("semantic-inplace-relu")
def _semantic_inplace_relu():
    CONV_INPLACE.load_state_dict(CONV.state_dict())
    masks = (torch.rand(4, 2, 2, 2, generator=torch.Generator().manual_seed(5)) > 0.3).float()
    for cls in (SemanticGuidedBackprop, SemanticGradientInput):
        a = cls(CONV, "conv1", masks).attribute(X_CONV, target=[0, 1, 3])
        b = cls(CONV_INPLACE, "conv1", masks).attribute(X_CONV, target=[0, 1, 3])
        assert torch.equal(a, b), cls.__name__
    ones = torch.ones(4, 2, 2, 2)
    ref = GuidedBackprop(CONV_INPLACE).attribute(X_CONV.clone(), target=2)
    assert_matches(SemanticGuidedBackprop(CONV_INPLACE, "conv1", ones).attribute(X_CONV, target=2), ref)


@RESULT_CASES.add("sgi-extra-forward-args-equals-captum")
def _semantic_extra_args():
    masks = torch.ones(2, 4)
    got = SemanticGradientInput(MULTI, "model.relu", masks).attribute(
        X_MULTI, target=1, additional_forward_args=(2,)
    )
    want = InputXGradient(MULTI).attribute(X_MULTI, target=1, additional_forward_args=(2,))
    assert_matches(got, want)  # Captum's own code path: to float tolerance


@RESULT_CASES.add("semantic-train-mode")
def _semantic_train_mode():
    CNN.train()
    try:
        with pytest.warns(UserWarning, match="training mode"):
            SemanticGuidedBackprop(CNN, "block3.pool", ONES).attribute(X, target=0)
        assert CNN.training
    finally:
        CNN.eval()


@RESULT_CASES.add("semantic-nan-example-isolated")
def _semantic_nan_does_not_leak():
    for cls in (SemanticGuidedBackprop, SemanticGradientInput):
        both = cls(CNN, "block3.pool", fitted_sv()).attribute(X_NAN, target=[0, 1, 2, 0])
        clean = cls(CNN, "block3.pool", fitted_sv()).attribute(X[1:], target=[1, 2, 0])
        assert_matches(both[1:], clean)  # a batch of 4 vs 3: other kernels, so to float tolerance


test_documented_result = pytest.mark.kernels(documented_result_test(RESULT_CASES))


# ---------------------------------------------------------------------- hypothesis properties
@FAST
@given(
    st.integers(1, 3), st.sampled_from(["gradient", "activation_gradient", "gradcam"]), st.integers(0, 2**16)
)
def test_embedding_attribution_finite_on_finite_inputs(n, method, seed):
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 4 - 2
    out = EmbeddingAttribution(CNN, "embedding", layer="block2.relu", method=method).attribute(x)
    assert out.shape == (n, 8, 8) and torch.isfinite(out).all()
