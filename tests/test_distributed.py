"""Example-sharded fitting on torch.distributed (2 gloo ranks on localhost) equals the single-process fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from captum_concepts import distributed as du
from captum_concepts.concept import CoupledNMFConcepts, SemanticVector
from captum_concepts.metrics import score_curve
from captum_concepts.testing import run_local_ranks

N = 40
WORLD = 2


def _blocks(n: int = N):
    gen = torch.Generator().manual_seed(1)
    pixels = [torch.rand(16, n, generator=gen, dtype=torch.float64)]
    acts = [torch.rand(12, n, generator=gen, dtype=torch.float64), torch.rand(6, n, generator=gen).double()]
    return pixels, acts


def _groups(n: int = N) -> np.ndarray:
    return np.arange(n) % 3 + 10  # ids 10, 11, 12: remapped identically on every rank


def _model() -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.ReLU())
        .double()
        .eval()
    )


def _images(n: int = N) -> torch.Tensor:
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def _labels(n: int = N) -> torch.Tensor:
    y = torch.arange(n) % 4
    y[-3:] = 4  # class 4 only in rank 1's shard: the concepts are the union over ranks
    return y


def _semantic(model: nn.Module, distributed: bool, x: torch.Tensor, y: torch.Tensor) -> dict:
    by_label = SemanticVector(model, "1", batch_size=6, distributed=distributed).fit_from_labels((x, y))
    named = SemanticVector(model, "3", batch_size=6, distributed=distributed).fit(
        {"low": x[y < 2], "high": x[y >= 2]}
    )
    return {
        name: [sv.vectors_, sv.activation_rates_, sv.diversity_, sv.n_examples_, sv.concept_names_]
        for name, sv in (("labels", by_label), ("named", named))
    }


def _curve(x: torch.Tensor):
    return score_curve(_model().float(), "3", ["1", None], x.float(), score="variance")


def _cnmf(**kw) -> CoupledNMFConcepts:
    base = dict(n_concepts=4, max_iter=25, tol=0.0, random_state=3, dtype=torch.float64)
    base.update(kw)
    return CoupledNMFConcepts(**base)


CASES = {
    "mu": dict(solver="mu"),
    "hals_groups": dict(solver="hals", group_sparsity=0.05, lambda_f=0.01, block_weights="balanced"),
    "mu_groups_shift": dict(solver="mu", group_sparsity=0.05, shift="min", lambda_o=0.1),
}


def _summary(cnmf: CoupledNMFConcepts) -> dict:
    return dict(
        F=du.gather_columns(cnmf.example_factors_),
        P=[p for p in cnmf.pixel_factors_],
        O=[o for o in cnmf.neuron_factors_],
        loss=list(cnmf.loss_history_),
    )


def _shifted(acts):
    return [acts[0] - 0.3, acts[1]]


def _sharded_worker() -> dict:
    """Runs on each rank: fit on this rank's contiguous shard and on a DistributedSampler loader."""
    rows = du.shard_range(N)
    pixels, acts = _blocks()
    out = {"shard": (rows.start, rows.stop), "world": du.get_world_size()}
    for name, kw in CASES.items():
        a = _shifted(acts) if kw.get("shift") else acts
        cnmf = _cnmf(distributed=True, **kw).fit_matrices(
            [x[:, rows.start : rows.stop] for x in pixels],
            [x[:, rows.start : rows.stop] for x in a],
            groups=_groups()[rows.start : rows.stop] if kw.get("group_sparsity") else None,
        )
        out[name] = _summary(cnmf)
    data = TensorDataset(_images())
    loader = DataLoader(data, batch_size=7, sampler=DistributedSampler(data, shuffle=False))
    cnmf = _cnmf(model=_model(), layers=["1", "4"], distributed=True).fit(loader)
    out["loader"] = _summary(cnmf)
    curve = _curve(_images()[rows.start : rows.stop])
    out["curve"] = du.all_reduce_mean(curve.per_example, dim=1)
    out["semantic"] = _semantic(
        _model(), True, _images()[rows.start : rows.stop], _labels()[rows.start : rows.stop]
    )
    return out


@pytest.fixture(scope="module")
def sharded():
    return run_local_ranks(_sharded_worker, world_size=WORLD)


def _assert_same(single: CoupledNMFConcepts, sharded: dict) -> None:
    ref = _summary(single)
    np.testing.assert_allclose(sharded["loss"], ref["loss"], rtol=1e-9)
    for got, want in zip(sharded["P"] + sharded["O"], ref["P"] + ref["O"]):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(sharded["F"], ref["F"].numpy(), rtol=1e-7, atol=1e-10)


def test_ranks_hold_disjoint_contiguous_shards(sharded):
    assert [r["world"] for r in sharded] == [WORLD, WORLD]
    assert [r["shard"] for r in sharded] == [(0, N // 2), (N // 2, N)]


@pytest.mark.parametrize("case", list(CASES))
def test_sharded_coupled_nmf_equals_single_process(sharded, case):
    kw = CASES[case]
    pixels, acts = _blocks()
    a = _shifted(acts) if kw.get("shift") else acts
    groups = _groups() if kw.get("group_sparsity") else None
    single = _cnmf(**kw).fit_matrices(pixels, a, groups=groups)
    assert single.n_iter_ == 25
    for rank in range(WORLD):  # every rank holds the same block factors and the full F's columns
        _assert_same(single, sharded[rank][case])
    # the shards are not a trivial split: a single-process fit of one shard differs
    rows = du.shard_range(N, 0, WORLD)
    half = _cnmf(**kw).fit_matrices(
        [x[:, rows.start : rows.stop] for x in pixels],
        [x[:, rows.start : rows.stop] for x in a],
        groups=None if groups is None else groups[rows.start : rows.stop],
    )
    assert not np.allclose(half.neuron_factors_[0].numpy(), sharded[0][case]["O"][0], rtol=1e-3)


def test_distributed_sampler_loader_equals_single_process_fit(sharded):
    # DistributedSampler(shuffle=False) gives rank r the examples r, r + 2, ...: rank-major global order
    order = torch.cat([torch.arange(r, N, WORLD) for r in range(WORLD)])
    single = _cnmf(model=_model(), layers=["1", "4"]).fit(_images()[order])
    _assert_same(single, sharded[0]["loader"])
    _assert_same(single, sharded[1]["loader"])


def test_helpers_without_process_group_are_single_process():
    t = torch.arange(3.0)
    assert du.all_reduce_sum(t) is t and du.gather_columns(t) is t
    assert not du.is_distributed() and du.get_rank() == 0 and du.get_world_size() == 1
    assert du.shard_offset(7) == (0, 7)
    assert [len(du.shard_range(10, r, 3)) for r in range(3)] == [4, 3, 3]
    assert sorted(i for r in range(3) for i in du.shard_range(10, r, 3)) == list(range(10))
    with pytest.raises(ValueError, match="rank"):
        du.shard_range(10, 3, 3)
    # distributed=True without a process group is a plain fit
    pixels, acts = _blocks()
    a = _cnmf(distributed=True).fit_matrices(pixels, acts)
    b = _cnmf().fit_matrices(pixels, acts)
    assert torch.equal(a.example_factors_, b.example_factors_)


@pytest.mark.parametrize("fit", ["labels", "named"])
def test_sharded_semantic_vectors_equal_single_process(sharded, fit):
    single = _semantic(_model(), False, _images(), _labels())[fit]
    assert single[4] == (list(range(5)) if fit == "labels" else ["low", "high"])
    for rank in range(WORLD):
        got = sharded[rank]["semantic"][fit]
        for a, b in zip(got[:4], single[:4]):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-6, atol=1e-7)
        assert got[4] == single[4]
    # one shard alone gives different vectors (rank 0 has no class 4 at all)
    half = _semantic(_model(), False, _images()[: N // 2], _labels()[: N // 2])["named"]
    assert not np.allclose(half[1].numpy(), sharded[0]["semantic"]["named"][1])


def test_score_curve_means_over_shards_equal_single_process(sharded):
    single = _curve(_images())
    for rank in range(WORLD):
        np.testing.assert_allclose(sharded[rank]["curve"], single.values.numpy(), rtol=1e-5)
    half = _curve(_images()[: N // 2])
    assert not np.allclose(half.values.numpy(), sharded[0]["curve"], rtol=1e-5)
