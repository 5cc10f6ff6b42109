"""Distributed misuse fails on every rank at once, with one clear message, in seconds.

Two local gloo ranks run a sequence of misused fits in ONE process group (each rank
catches its exception and reports it); after every failure the ranks must still be in
step, which the clean fit at the end checks. A hang would raise after ``TIMEOUT_S`` on its rank.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from captum_concepts import distributed as du
from captum_concepts.concept import CoupledNMFConcepts, SemanticVector
from captum_concepts.testing import run_local_ranks

N = 12
TIMEOUT_S = 30  # per collective: a hang raises on its rank after this (the whole run takes ~30 s)
WALL_TIMEOUT_S = 600  # the whole run, spawn and imports included, on a loaded machine


def _model() -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def _images(n: int = N) -> torch.Tensor:
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(2))


def _blocks(rows=(8, 5), n: int = N):
    gen = torch.Generator().manual_seed(1)
    return [torch.rand(r, n, generator=gen) for r in rows]


def _cnmf(**kw) -> CoupledNMFConcepts:
    return CoupledNMFConcepts(**{"n_concepts": 3, "max_iter": 5, "tol": 0.0, "distributed": True, **kw})


def _outcome(fn):
    try:
        fn()
    except Exception as exc:  # reported to the test process
        return type(exc).__name__, str(exc)
    return "ok", ""


def _scenarios(rank: int) -> dict:
    one = rank == 1
    blocks = _blocks()
    nan = _blocks()
    if one:
        nan[1][2, 3] = float("nan")
    labels = torch.arange(N) % 3
    return {
        "max_iter": lambda: _cnmf(max_iter=7 if one else 5).fit_matrices([], blocks),
        "n_concepts": lambda: _cnmf(n_concepts=4 if one else 3).fit_matrices([], blocks),
        "block_rows": lambda: _cnmf().fit_matrices([], _blocks((8, 6) if one else (8, 5))),
        "pool": lambda: _cnmf(model=_model(), layers=["1"], pool="max" if one else "none").fit(_images()),
        "include_pixels": lambda: _cnmf(model=_model(), layers=["4"], include_pixels=not one).fit(_images()),
        "layer_shape": lambda: _cnmf(model=nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU()), layers=["1"]).fit(
            _images()[:, :, : 5 if one else 6]
        ),
        "bad_params_one_rank": lambda: _cnmf(tol=-1.0 if one else 0.0).fit_matrices([], blocks),
        "nan": lambda: _cnmf().fit_matrices([], nan),
        "bad_groups": lambda: _cnmf(group_sparsity=0.1).fit_matrices(
            [], blocks, groups=np.arange(N - 1 if one else N) % 2
        ),
        "empty_shard": lambda: _cnmf().fit_matrices([], [b[:, :0] for b in blocks] if one else blocks),
        "forward_fails": lambda: _cnmf(model=_model(), layers=["4"]).fit(
            torch.rand(N, 2, 6, 6) if one else _images()
        ),
        "sv_bad_labels": lambda: SemanticVector(_model(), "1", distributed=True).fit_from_labels(
            (_images(), labels - 1 if one else labels)
        ),
        "sv_concepts": lambda: SemanticVector(_model(), "1", distributed=True).fit(
            {("b" if one else "a"): _images(), "c": _images()}
        ),
        "sv_layer": lambda: SemanticVector(_model(), "3" if one else "1", distributed=True).fit(
            {"a": _images()}
        ),
    }


def _worker() -> dict:
    rank = du.get_rank()
    out = {name: _outcome(fn) for name, fn in _scenarios(rank).items()}
    rows = du.shard_range(N)
    clean = _cnmf(max_iter=10).fit_matrices([], [b[:, rows.start : rows.stop] for b in _blocks()])
    out["clean_loss"] = list(clean.loss_history_)
    return out


@pytest.fixture(scope="module")
def outcomes():
    return run_local_ranks(_worker, world_size=2, timeout_s=TIMEOUT_S, wall_timeout_s=WALL_TIMEOUT_S)


MISMATCH = {
    "max_iter": "max_iter",
    "n_concepts": "n_concepts",
    "block_rows": "block_rows",
    "pool": "pool",
    "include_pixels": "include_pixels",
    "layer_shape": "block_rows",
    "sv_concepts": "concepts",
    "sv_layer": "layer",
}


@pytest.mark.parametrize("case", sorted(MISMATCH))
def test_disagreeing_ranks_raise_the_same_error_on_every_rank(outcomes, case):
    (kind0, msg0), (kind1, msg1) = outcomes[0][case], outcomes[1][case]
    assert kind0 == kind1 == "ValueError", (msg0, msg1)
    head = msg0.split(" (")[0]
    assert msg0 == msg1 and "the ranks disagree on" in head and MISMATCH[case] in head
    assert "rank 0" in msg0 and "rank 1" in msg0


LOCAL = {
    "bad_params_one_rank": "tol must be",
    "bad_groups": "groups must be 1-D",
    "empty_shard": "non-empty",
    "forward_fails": "",
    "sv_bad_labels": "labels must lie in",
}


@pytest.mark.parametrize("case", sorted(LOCAL))
def test_a_local_failure_reaches_every_rank(outcomes, case):
    (kind0, msg0), (kind1, msg1) = outcomes[0][case], outcomes[1][case]
    assert kind1 not in ("ok", "RankFailedError") and LOCAL[case] in msg1
    assert kind0 == "RankFailedError", msg0
    assert "failed on 1 of 2 ranks (rank 1:" in msg0 and LOCAL[case] in msg0


def test_nan_on_one_rank_fails_on_both(outcomes):
    for rank in (0, 1):
        kind, msg = outcomes[rank]["nan"]
        assert kind == "ValueError" and "NaN" in msg


def test_ranks_stay_in_step_after_every_failure(outcomes):
    single = CoupledNMFConcepts(3, max_iter=10, tol=0.0).fit_matrices([], _blocks())
    for rank in (0, 1):
        np.testing.assert_allclose(outcomes[rank]["clean_loss"], single.loss_history_, rtol=1e-5)


def test_without_a_process_group_distributed_is_a_plain_fit():
    assert not du.is_distributed()
    a = _cnmf().fit_matrices([], _blocks())
    b = CoupledNMFConcepts(3, max_iter=5, tol=0.0).fit_matrices([], _blocks())
    torch.testing.assert_close(a.example_factors_, b.example_factors_)
