"""Bad inputs for the metrics: noise/benchmark/variance/drift scores, score_curve and the pointing game.

Error cases that must raise a clear error naming the argument; cases with a documented correct
result (constant maps score 0, one embedding dimension has variance 0, empty boxes -> NaN, zero and
constant maps never hit); hypothesis properties (scores within [0, 1] and [0, 1/4] on arbitrary
constant, zero, spiky and negative maps; pointing game in {0, 1} and equal to the classic game at
energy 0). The models and inputs are checked untouched after every case (``untouched`` in
``tests/conftest.py``).
"""

from __future__ import annotations

import torch
from _bad_inputs_common import (
    CNN,
    FAST,
    MAPS,
    X_NAN,
    E,
    ResultCases,
    X,
    clear_error_test,
    documented_result_test,
    ea,
)
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from captum_concepts.metrics import (
    drift_score,
    noise_benchmark,
    noise_score,
    pointing_game,
    pointing_game_curve,
    score_curve,
    variance_score,
)

RESULT_CASES = ResultCases()


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
ERROR_CASES = METRIC_ERRORS + POINTING_ERRORS
test_clear_error = clear_error_test(ERROR_CASES)


# ---------------------------------------------------------------------- documented results
@RESULT_CASES.add("ns-constant-maps")
def _ns_constant_maps_are_zero():
    assert torch.equal(noise_score(const_explainer, X), torch.zeros(4))


@RESULT_CASES.add("vs-D=1")
def _vs_one_dim_is_zero():
    assert torch.equal(variance_score(ea(), X, embedding_dims=[2]), torch.zeros(4))


@RESULT_CASES.add("pg-empty-box-nan")
def _pg_empty_box_nan():
    got = pointing_game(MAPS, boxes=torch.tensor([[0, 0, 0, 3], [0, 0, 6, 6]]), on_empty="nan")
    assert torch.isnan(got[0]) and got[1] == 1.0


@RESULT_CASES.add("pg-zero-map-miss")
def _pg_zero_map_is_a_miss():
    assert torch.equal(pointing_game(torch.zeros(2, 6, 6), boxes=BOXES), torch.zeros(2))


@RESULT_CASES.add("pg-constant-map")
def _pg_constant_map():
    full = torch.tensor([[0, 0, 6, 6], [0, 0, 6, 6]])
    assert torch.equal(pointing_game(torch.ones(2, 6, 6), boxes=BOXES), torch.zeros(2))
    assert torch.equal(pointing_game(torch.ones(2, 6, 6), boxes=full), torch.ones(2))


test_documented_result = documented_result_test(RESULT_CASES)


# ---------------------------------------------------------------------- hypothesis properties
MAP_KINDS = st.sampled_from(["random", "constant", "zeros", "spiky", "negative"])


@FAST
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), MAP_KINDS, st.integers(0, 2**16))
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


@FAST
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
