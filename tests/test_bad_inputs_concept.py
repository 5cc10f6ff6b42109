"""Bad inputs for the concept estimators: SemanticVector and CoupledNMFConcepts.

Error cases that must raise a clear error naming the parameter or argument, for SemanticVector,
CoupledNMFConcepts and its out-of-core mode (OutOfCore, ActivationStore, fit_store); cases with a
documented correct result (constant and one-unit layers, train-mode models and in-place ReLUs,
reused modules, extra forward arguments, NaN confined to its example, zero rows/columns, rank > data,
``distributed=True`` without a process group) and a hypothesis property (coupled NMF finite and
non-negative on sparse data with zero rows/columns). The models and inputs are checked untouched
after every case (``untouched`` in ``tests/conftest.py``).
"""

from __future__ import annotations

import copy
import functools
import os
import tempfile

import numpy as np
import pytest
import torch
from _bad_inputs_common import (
    CNN,
    CONV,
    CONV_INPLACE,
    DROPOUT,
    FAST,
    MULTI,
    REUSED,
    UNUSED,
    X_CONV,
    X_LIN,
    X_MULTI,
    X_NAN,
    E,
    G,
    ResultCases,
    X,
    Y,
    clear_error_test,
    documented_result_test,
    fitted_sv,
)
from _kernels import assert_matches
from hypothesis import given
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError
from torch import nn

from captum_concepts.concept import ActivationStore, CoupledNMFConcepts, OutOfCore, SemanticVector

RESULT_CASES = ResultCases()


@functools.cache
def named_sv() -> SemanticVector:
    return SemanticVector(CNN, "block3.pool").fit({"round": X[:2], "thin": X[2:]})


@functools.cache
def fitted_cnmf() -> CoupledNMFConcepts:
    g = torch.Generator().manual_seed(2)
    return CoupledNMFConcepts(3, max_iter=10).fit_matrices(
        [torch.rand(6, 10, generator=g)], [torch.rand(5, 10, generator=g)]
    )


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
    # one rule for every entry that reads a layer (issue 27.4): a module run twice is refused
    E("sv-reused-module", lambda: SemanticVector(REUSED, "relu").fit({"a": X_LIN}), ValueError, "run 2 time"),
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
    E(
        "cnmf-transform-unfitted",
        lambda: cn().transform(pixel_blocks=[mat(4, 5)], activation_blocks=[]),
        NotFittedError,
        "not fitted",
    ),
    E(
        "cnmf-transform-rows",
        lambda: fitted_cnmf().transform(pixel_blocks=[mat(3, 2)], activation_blocks=[mat(5, 2)]),
        ValueError,
        r"pixels\[0\] has 3 rows, expected 6",
    ),
    E(
        "cnmf-transform-rows-shifted",
        lambda: (
            cn(shift="min")
            .fit_matrices([mat(6, 5) - 0.5], [mat(5, 5)])
            .transform(pixel_blocks=[mat(3, 2)], activation_blocks=[mat(5, 2)])
        ),
        ValueError,
        r"pixels\[0\] has 3 rows, expected 6",
    ),
    E(
        "cnmf-transform-blocks",
        lambda: fitted_cnmf().transform(pixel_blocks=[mat(6, 2)], activation_blocks=[]),
        ValueError,
        "transform needs 1 pixel blocks and 1",
    ),
    E(
        "cnmf-transform-nan",
        lambda: fitted_cnmf().transform(
            pixel_blocks=[mat(6, 2, fill=float("nan"))], activation_blocks=[mat(5, 2)]
        ),
        ValueError,
        "contains NaN",
    ),
    E(
        "cnmf-transform-negative",
        lambda: fitted_cnmf().transform(pixel_blocks=[mat(6, 2) - 1], activation_blocks=[mat(5, 2)]),
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
ERROR_CASES = SV_ERRORS + CNMF_ERRORS + OUT_OF_CORE_ERRORS
test_clear_error = clear_error_test(ERROR_CASES)


# ---------------------------------------------------------------------- documented results
@RESULT_CASES.add("sv-constant-layer")
def _sv_constant_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU()).eval()
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)
    est = SemanticVector(model, "2").fit({"a": X})
    assert torch.equal(est.vectors_, torch.zeros(1, 6)) and float(est.diversity_[0]) == 1.0
    assert torch.equal(est.similarity(X), torch.zeros(4, 1))


@RESULT_CASES.add("sv-one-unit-layer(D=1)")
def _sv_one_unit_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 1), nn.ReLU()).eval()
    est = SemanticVector(model, "2").fit_from_labels((X, Y))
    assert est.vectors_.shape == (3, 1) and set(est.vectors_.flatten().tolist()) <= {0.0, 1.0}


@RESULT_CASES.add("sv-train-mode")
def _sv_train_mode():
    DROPOUT.train()
    try:
        with pytest.warns(UserWarning, match="training mode"):
            a = SemanticVector(DROPOUT, "drop").fit({"a": torch.rand(8, 4, generator=G)})
        assert DROPOUT.training
    finally:
        DROPOUT.eval()
    assert torch.equal(a.transform(torch.ones(2, 4)), DROPOUT.relu(DROPOUT.lin(torch.ones(2, 4))).detach())


@RESULT_CASES.add("sv-inplace-relu-after-layer")
def _sv_inplace_relu_after_layer():
    CONV_INPLACE.load_state_dict(CONV.state_dict())
    a = SemanticVector(CONV, "conv1").fit({"c": X_CONV})
    b = SemanticVector(CONV_INPLACE, "conv1").fit({"c": X_CONV})
    assert torch.equal(a.vectors_, b.vectors_)
    assert torch.equal(b.transform(X_CONV), CONV.conv1(X_CONV).flatten(1).detach())


@RESULT_CASES.add("sv-extra-forward-args")
def _sv_extra_forward_args():
    est = SemanticVector(MULTI, "model.linear1").fit({"a": X_MULTI}, additional_forward_args=(2,))
    want = MULTI.model.linear1(MULTI.model.linear0(2 * sum(X_MULTI))).detach()
    assert torch.equal(est.transform(X_MULTI, additional_forward_args=(2,)), want)


@RESULT_CASES.add("sv-nan-at-transform")
def _sv_nan_at_transform():
    # NaN isolation: the NaN example's row is NaN, the other rows are finite and match the same
    # examples without it (a batch of 3, not 4: another kernel path, so to float tolerance)
    sim = fitted_sv().similarity(X_NAN)
    assert torch.isnan(sim[0]).all()
    assert_matches(sim[1:], fitted_sv().similarity(X[1:]))


@RESULT_CASES.add("cnmf-all-zero-matrix")
def _cnmf_all_zero():
    est = cn(max_iter=5).fit_matrices([torch.zeros(4, 6)])
    assert torch.isfinite(est.example_factors_).all() and float(est.example_factors_.abs().max()) < 1e-6


@RESULT_CASES.add("cnmf-zero-rows-and-columns")
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


@RESULT_CASES.add("cnmf-one-row-one-example")
def _cnmf_one_row_and_one_example():
    a = cn(n_concepts=1, max_iter=20).fit_matrices([mat(1, 5)])
    b = cn(n_concepts=2, max_iter=20).fit_matrices([mat(4, 1)])
    assert a.example_factors_.shape == (1, 5) and b.example_factors_.shape == (2, 1)
    assert torch.isfinite(a.example_factors_).all() and torch.isfinite(b.example_factors_).all()


@RESULT_CASES.add("cnmf-rank-larger-than-data")
def _cnmf_rank_larger_than_data():
    est = cn(n_concepts=10, max_iter=30, normalize_columns=False).fit_matrices([mat(2, 3)])
    assert torch.isfinite(est.example_factors_).all()
    loss = est.loss_history_
    # non-increasing up to float32 cancellation of the trace-identity objective near 0
    assert all(b <= a + 1e-6 * loss[0] for a, b in zip(loss, loss[1:]))
    assert loss[-1] < 1e-3 * loss[0]  # d > rank: an exact fit exists


@RESULT_CASES.add("cnmf-shift-min")
def _cnmf_shift_min():
    data = mat(4, 6) - 0.5
    est = cn(shift="min", max_iter=5).fit_matrices([], [data])
    assert torch.allclose(est.shift_[0], data.amin(dim=1).clamp(max=0))


@RESULT_CASES.add("cnmf-numpy-equals-tensor")
def _cnmf_numpy_equals_tensor():
    a = cn(max_iter=5).fit_matrices([mat(4, 6).numpy()])
    b = cn(max_iter=5).fit_matrices([mat(4, 6)])
    assert torch.equal(a.example_factors_, b.example_factors_)


@RESULT_CASES.add("cnmf-train-mode-inplace-relu")
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


@RESULT_CASES.add("cnmf-model-on-cuda-inputs-on-cpu")
def _cnmf_model_device():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: CoupledNMFConcepts moves batches to the model's device (documented)")
    model = copy.deepcopy(CNN).cuda()
    est = cn(model=model, layers=["block3.pool"]).fit(X)  # CPU inputs, CUDA model
    assert est.example_factors_.is_cuda


@RESULT_CASES.add("distributed-flag-without-process-group")
def _distributed_without_process_group():
    a = cn(max_iter=5, distributed=True).fit_matrices([mat(4, 6)])
    b = cn(max_iter=5).fit_matrices([mat(4, 6)])
    assert torch.equal(a.example_factors_, b.example_factors_)  # documented: a plain fit
    sv_a = SemanticVector(CNN, "block3.pool", distributed=True).fit_from_labels((X, Y))
    assert torch.equal(sv_a.vectors_, fitted_sv().vectors_)


test_documented_result = pytest.mark.kernels(documented_result_test(RESULT_CASES))


# ---------------------------------------------------------------------- hypothesis properties
@FAST
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
    assert torch.isfinite(est.transform(pixel_blocks=[data], activation_blocks=[])).all()
