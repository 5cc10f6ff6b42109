"""CoupledNMFConcepts as a scikit-learn user drives it: fit_transform, transform's orientation,
verbose, progress bars."""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch

from captum_concepts.concept import CoupledNMFConcepts
from captum_concepts.concept._core import cnmf_fitting
from captum_concepts.testing import assert_same_state, model_state


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def x():
    return torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _blocks(n=30):
    g = torch.Generator().manual_seed(2)
    return [torch.rand(12, n, generator=g)], [torch.rand(9, n, generator=g)]


def _cnmf(model, **kw):
    kw = {"solver": "hals", "max_iter": 15, "random_state": 0, **kw}
    return CoupledNMFConcepts(3, model, layers=["block2.pool"], **kw)


def test_fit_transform_is_the_fitted_example_factor_one_row_per_example(random_digits_cnn, x):
    before = model_state(random_digits_cnn)
    est = _cnmf(random_digits_cnn)
    out = est.fit_transform(x, show_progress=False)
    assert out.shape == (24, 3)
    torch.testing.assert_close(out, est.example_factors_.t(), rtol=0, atol=0)
    # the same as fit followed by reading F, in the orientation of scikit-learn's NMF
    ref = _cnmf(random_digits_cnn).fit(x, show_progress=False).example_factors_.t()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-7)
    assert out.abs().max() > 0
    assert_same_state(before, random_digits_cnn)


def test_transform_orientation_samples_first_and_the_future_warning(random_digits_cnn, x):
    est = _cnmf(random_digits_cnn).fit(x, show_progress=False)
    with pytest.warns(FutureWarning, match=r"samples_first=True for \(M, d\)"):
        legacy = est.transform(x[:5])
    assert legacy.shape == (3, 5)  # the paper's F, concepts first, as before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = est.transform(x[:5], samples_first=True)
        cols = est.transform(x[:5], samples_first=False)
    assert rows.shape == (5, 3) and cols.shape == (3, 5)
    torch.testing.assert_close(rows, cols.t(), rtol=0, atol=0)
    torch.testing.assert_close(cols, legacy, rtol=0, atol=0)
    # transform of the fitted examples re-solves F with the block factors fixed: close to the fit's
    again = est.transform(x, samples_first=True)
    assert again.shape == est.fit_transform(x, show_progress=False).shape
    with pytest.raises(ValueError, match="samples_first must be"):
        est.transform(x[:5], samples_first="yes")


def test_transform_of_matrices_takes_samples_first_too():
    pix, act = _blocks()
    est = CoupledNMFConcepts(3, solver="hals", max_iter=10).fit_matrices(pix, act, show_progress=False)
    rows = est.transform(pixel_blocks=[p[:, :4] for p in pix], activation_blocks=[a[:, :4] for a in act],
                         samples_first=True)
    assert rows.shape == (4, 3) and rows.abs().max() > 0


def test_verbose_prints_the_objective_every_k_iterations(capsys):
    pix, act = _blocks()
    est = CoupledNMFConcepts(3, solver="mu", max_iter=7, tol=0, verbose=3)
    est.fit_matrices(pix, act, show_progress=False)
    lines = capsys.readouterr().out.strip().splitlines()
    found = [re.fullmatch(r"CoupledNMFConcepts: iteration (\d+), objective (\S+)", s) for s in lines]
    assert all(found), lines
    iters = [int(m[1]) for m in found]
    assert iters == [3, 6, 7]  # every 3rd, and the last one
    for it, m in zip(iters, found):
        assert float(m[2]) == pytest.approx(est.loss_history_[it], rel=1e-5)
    CoupledNMFConcepts(3, solver="mu", max_iter=7).fit_matrices(pix, act, show_progress=False)
    assert capsys.readouterr().out == ""  # verbose=0 by default: silent
    with pytest.raises(ValueError, match="verbose must be"):
        CoupledNMFConcepts(3, verbose=-1).fit_matrices(pix, act)


class _Recorder:
    """Stands in for the tqdm bar: records how it was made and what it was told."""

    made: list = []

    def __init__(self, *, show, total, desc, unit, **_):
        self.show, self.total, self.updates, self.postfix, self.closed = show, total, 0, [], False
        _Recorder.made.append(self)

    def update(self, n):
        self.updates += n

    def set_postfix(self, refresh=True, **kw):
        self.postfix.append(kw)

    def close(self):
        self.closed = True


@pytest.mark.parametrize("entry", ["fit", "fit_matrices", "fit_store", "fit_transform"])
def test_every_fit_shows_a_progress_bar_with_the_loss(monkeypatch, entry, random_digits_cnn, x, tmp_path):
    from captum_concepts.concept import ActivationStore

    _Recorder.made = []
    monkeypatch.setattr(cnmf_fitting, "progress_bar", lambda iterable=None, **kw: _Recorder(**kw))
    pix, act = _blocks()
    est = CoupledNMFConcepts(3, random_digits_cnn, layers=["block2.pool"], solver="mu", max_iter=6, tol=0)
    if entry == "fit":
        est.fit(x)
    elif entry == "fit_transform":
        est.fit_transform(x)
    elif entry == "fit_matrices":
        est.fit_matrices(pix, act)
    else:
        store = ActivationStore(None, [12, 9], n_pixel_blocks=1, directory=str(tmp_path))
        store.append([pix[0].t(), act[0].t()])
        est.fit_store(store)
    (bar,) = _Recorder.made
    assert bar.show is True and bar.total == 6 and bar.closed
    assert bar.updates == est.n_iter_ == 6
    shown = [float(p["loss"]) for p in bar.postfix]
    assert shown == pytest.approx(est.loss_history_[1:], rel=1e-5)
    _Recorder.made = []
    est.fit_matrices(pix, act, show_progress=False)
    assert _Recorder.made[0].show is False
    with pytest.raises(ValueError, match="show_progress must be"):
        est.fit_matrices(pix, act, show_progress="no")


@pytest.mark.parametrize("out_of_core", [False, True])
def test_a_fit_resolves_its_layers_once_and_transform_reuses_them(out_of_core, tmp_path):
    """One resolution per fit, whatever the number of batches (in memory and on disk), none in
    ``transform``; a loaded estimator resolves its layers once, at its first ``transform``."""
    from unittest import mock

    from captum_concepts._utils import layers
    from captum_concepts.concept import OutOfCore

    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(108, 5),
        torch.nn.ReLU(),
    ).eval()
    x = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    settings = OutOfCore("4MB", directory=str(tmp_path)) if out_of_core else None
    est = CoupledNMFConcepts(2, model, layers=["1", "4"], batch_size=8, max_iter=3, out_of_core=settings)
    with mock.patch.object(layers, "resolve_layer", wraps=layers.resolve_layer) as resolve:
        est.fit(x)  # 4 batches
        assert resolve.call_count == 2  # one call per layer
        got = est.transform(x[:5], samples_first=True)
        est.fit_transform(x)
        assert resolve.call_count == 4
        est.transform(x[:5], samples_first=True)
        est.save(tmp_path / "cnmf.pt")
        loaded = CoupledNMFConcepts.load(tmp_path / "cnmf.pt", model=model)
        assert resolve.call_count == 4
        torch.testing.assert_close(
            loaded.transform(x[:5], samples_first=True), est.transform(x[:5], samples_first=True)
        )
        loaded.transform(x[:5], samples_first=True)
        assert resolve.call_count == 6
        # a new model after the fit: transform resolves again (once) and reads it
        other = copy.deepcopy(model)
        other[0].weight.data.mul_(2.0)
        est.model = other
        changed = est.transform(x[:5], samples_first=True)
        assert resolve.call_count == 8
        reference = CoupledNMFConcepts.load(tmp_path / "cnmf.pt", model=other)
        torch.testing.assert_close(changed, reference.transform(x[:5], samples_first=True))
        assert not torch.allclose(changed, got)
    torch.testing.assert_close(got, est.set_params(model=model).fit(x).transform(x[:5], samples_first=True))


class _CountedName(str):
    """A layer name that counts its lookups: ``resolve_layer`` reads a name's prefix once per lookup."""

    lookups = 0

    def startswith(self, *args):
        _CountedName.lookups += 1
        return str.startswith(self, *args)


def test_the_concept_basis_reads_the_layers_the_fit_resolved(random_digits_cnn, x):
    """Concept maps read a coupled fit's layer through its block specification, as ``transform``
    does: after ``fit`` no layer is looked up again, whatever the entry."""
    from captum_concepts.concept._core.basis import concept_basis

    _CountedName.lookups = 0
    est = CoupledNMFConcepts(3, random_digits_cnn, layers=[_CountedName("block2.pool")], max_iter=3)
    est.fit(x, show_progress=False)
    assert _CountedName.lookups == 1
    by_name, by_index = concept_basis(est, "block2.pool"), concept_basis(est, 0)
    est.transform(x[:4], samples_first=True)
    assert _CountedName.lookups == 1
    assert by_name.module is by_index.module is random_digits_cnn.block2.pool
    assert torch.equal(by_name.basis, est.neuron_factors_[0].float())


@pytest.mark.parametrize("out_of_core", [False, True])
def test_a_loader_block_weights_and_groups_are_checked_once_counted(out_of_core, tmp_path):
    """A loader's block and example counts are known only after collection: the same errors as
    for a tensor, before the factorisation."""
    from captum_concepts.concept import OutOfCore

    x = torch.rand(10, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    loader = [x[:6], x[6:]]
    kw = dict(max_iter=2, out_of_core=OutOfCore("4MB", directory=str(tmp_path)) if out_of_core else None)
    with pytest.raises(ValueError, match="block_weights must hold 2 weights, one per block"):
        CoupledNMFConcepts(2, block_weights=[1.0], **kw).fit(loader)
    with pytest.raises(
        ValueError, match=r"groups must be 1-D with one entry per example \(N=10\), got shape \(9,\)"
    ):
        CoupledNMFConcepts(2, **kw).fit(loader, groups=list(range(9)))
    assert CoupledNMFConcepts(2, block_weights=[1.0, 2.0], **kw).fit(
        loader, groups=[0, 1] * 5
    ).block_weights_ == [1.0, 2.0]
