"""Out-of-core coupled NMF: data on disk, fit in chunks within a memory budget, equal to the in-memory fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from captum_concepts.concept import ActivationStore, CoupledNMFConcepts, OutOfCore
from captum_concepts.concept._core.out_of_core import parse_bytes

BIG_N, PIX, ACT, CHUNK = 16000, 600, 400, 2000  # 16000 x 1000 float32 = 61 MiB on disk
BUDGET = "24MB"
KW = dict(n_concepts=4, max_iter=8, tol=0.0, random_state=0)


def big_chunk(i: int):
    """Chunk ``i`` of the big data set, generated on its own: nobody ever holds the whole matrix."""
    gen = torch.Generator().manual_seed(100 + i)
    return torch.rand(CHUNK, PIX, generator=gen), torch.rand(CHUNK, ACT, generator=gen) * 2.0


CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_out_of_core import BIG_N, BUDGET, CHUNK, KW, big_chunk
    from captum_concepts.concept import CoupledNMFConcepts
    from captum_concepts.concept import ActivationStore, OutOfCore

    def status():
        out = {{}}
        for line in open("/proc/self/status"):
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
        return out

    store = ActivationStore({path!r}, [600, 400], n_pixel_blocks=1)
    for i in range(BIG_N // CHUNK):
        store.append(list(big_chunk(i)))
    store.close()
    # warm up lazily allocated torch/BLAS workspaces at these sizes, then measure the fit alone
    CoupledNMFConcepts(**dict(KW, max_iter=1), out_of_core=OutOfCore(BUDGET)).fit_store(store)
    open("/proc/self/clear_refs", "w").write("5")
    before = status()["VmRSS"]
    cnmf = CoupledNMFConcepts(out_of_core=OutOfCore(BUDGET), **KW).fit_store(store)
    peak = status()["VmHWM"] - before
    np.savez({result!r}, F=cnmf.example_factors_.numpy(), P=cnmf.pixel_factors_[0].numpy(),
             O=cnmf.neuron_factors_[0].numpy(), loss=np.array(cnmf.loss_history_))
    print(json.dumps({{"peak": peak, "data": store.nbytes}}))
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_fit_larger_than_budget_stays_within_budget_and_matches_in_memory(tmp_path):
    script = CHILD.format(
        tests=os.path.dirname(__file__), path=str(tmp_path / "acts.bin"), result=str(tmp_path / "r.npz")
    )
    # glibc returns every large block on free: resident memory then follows the live allocations
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    budget = parse_bytes(BUDGET)
    assert report["data"] > 2.5 * budget  # the data does not fit in the budget...
    # ...and the fit's peak resident memory stays within it, most of it being the chunk buffer
    assert budget / 2 < report["peak"] < budget
    got = np.load(tmp_path / "r.npz")
    parts = [big_chunk(i) for i in range(BIG_N // CHUNK)]
    pixels = torch.cat([p for p, _ in parts]).t()
    acts = torch.cat([a for _, a in parts]).t()
    del parts
    ref = CoupledNMFConcepts(**KW).fit_matrices([pixels], [acts])
    np.testing.assert_allclose(got["loss"], ref.loss_history_, rtol=1e-5)
    np.testing.assert_allclose(got["P"], ref.pixel_factors_[0].numpy(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(got["O"], ref.neuron_factors_[0].numpy(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(got["F"], ref.example_factors_.numpy(), rtol=1e-3, atol=1e-4)


def _small(n: int = 300):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(25, n, generator=gen, dtype=torch.float64), torch.rand(
        15, n, generator=gen
    ).double() - 0.2


def _store(path, pixels, acts, storage=torch.float32, batch=64) -> ActivationStore:
    store = ActivationStore(str(path), [pixels.shape[0], acts.shape[0]], storage, n_pixel_blocks=1)
    for s in range(0, pixels.shape[1], batch):
        store.append([pixels[:, s : s + batch].t(), acts[:, s : s + batch].t()])
    return store.close()


@pytest.mark.parametrize(
    "storage, kw",
    [
        (torch.float32, dict(solver="hals", shift="min", block_weights="balanced", lambda_o=0.1)),
        (torch.float16, dict(solver="mu", shift="min", group_sparsity=0.1)),
    ],
)
def test_streamed_equals_in_memory_on_the_stored_values(tmp_path, storage, kw):
    pixels, acts = _small()
    store = _store(tmp_path / "a.bin", pixels, acts, storage)
    groups = np.arange(pixels.shape[1]) % 5
    settings = OutOfCore(memory_budget="160KB", storage_dtype=storage)  # 4 chunks of examples
    args = dict(KW, max_iter=15, dtype=torch.float64, **kw)
    streamed = CoupledNMFConcepts(out_of_core=settings, **args).fit_store(store, groups=groups)
    stored = torch.from_numpy(np.asarray(store.as_array(), dtype=np.float64)).t()  # rounded like the file
    assert torch.equal(stored[:25], pixels.to(storage).double())
    ref = CoupledNMFConcepts(**args).fit_matrices([stored[:25]], [stored[25:]], groups=groups)
    np.testing.assert_allclose(streamed.loss_history_, ref.loss_history_, rtol=1e-10)
    for a, b in zip(
        streamed.pixel_factors_ + streamed.neuron_factors_, ref.pixel_factors_ + ref.neuron_factors_
    ):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(streamed.example_factors_, ref.example_factors_, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(streamed.shift_[1], ref.shift_[1])
    assert streamed.shift_[0] is None
    # transform of new data works as after an in-memory fit
    torch.testing.assert_close(
        streamed.transform(pixel_blocks=[stored[:25, :10]], activation_blocks=[stored[25:, :10]]),
        ref.transform(pixel_blocks=[stored[:25, :10]], activation_blocks=[stored[25:, :10]]),
    )


def test_fit_with_out_of_core_collects_to_disk_and_cleans_up(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 6), nn.ReLU()).eval()
    x = torch.rand(50, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    args = dict(KW, model=model, layers=["1", "4"], batch_size=16)
    settings = OutOfCore("1MB", directory=str(tmp_path))
    streamed = CoupledNMFConcepts(out_of_core=settings, **args).fit(x)
    ref = CoupledNMFConcepts(**args).fit(x)
    assert list(tmp_path.iterdir()) == []  # the activation file is removed after the fit
    assert streamed.layer_names_ == ref.layer_names_ == ["1", "4"]
    assert streamed.layer_shapes_ == ref.layer_shapes_ and streamed.input_shape_ == ref.input_shape_
    np.testing.assert_allclose(streamed.loss_history_, ref.loss_history_, rtol=1e-5)
    torch.testing.assert_close(streamed.example_factors_, ref.example_factors_, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(streamed.transform(x[:5]), ref.transform(x[:5]), rtol=1e-3, atol=1e-5)


def test_budget_and_store_errors(tmp_path):
    pixels, acts = _small()
    store = _store(tmp_path / "a.bin", pixels, acts)
    with pytest.raises(ValueError, match="memory_budget=1000 bytes is too small.*at least"):
        CoupledNMFConcepts(out_of_core=OutOfCore(1000), shift="min", **KW).fit_store(store)
    with pytest.raises(ValueError, match="activation_blocks\\[0\\] has minimum"):
        CoupledNMFConcepts(**KW).fit_store(store)  # negative activations without shift
    with pytest.raises(ValueError, match="memory_budget"):
        CoupledNMFConcepts(out_of_core=OutOfCore("lots"), **KW).fit_store(store)
    with pytest.raises(TypeError, match="out_of_core"):
        CoupledNMFConcepts(out_of_core="1GB", **KW).fit_store(store)
    with pytest.raises(TypeError, match="ActivationStore"):
        CoupledNMFConcepts(**KW).fit_store(pixels)
    bad = ActivationStore(str(tmp_path / "b.bin"), [2])
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        bad.append([torch.ones(3, 4)])
    bad.append([torch.tensor([[1.0, float("nan")]])])
    with pytest.raises(ValueError, match="NaN"):
        CoupledNMFConcepts(**KW).fit_store(bad.close())
    assert parse_bytes("1.5KB") == 1536 and parse_bytes("2 GB") == 2 << 30 and parse_bytes(10) == 10


def test_one_shift_rule_for_blocks_and_streamed_rows():
    from captum_concepts.concept._core.nonnegative_blocks import apply_shift, read_shift

    block = torch.tensor([[-3.0, -1.0, 2.0], [0.5, -0.2, 1.0]])  # (features, N)
    shift = torch.tensor([-2.0, 0.0])
    expected = torch.tensor([[0.0, 1.0, 4.0], [0.5, 0.0, 1.0]])  # x - shift, clipped at 0
    assert torch.equal(apply_shift(block, shift), expected)
    rows = block.t().clone()  # (N, features), as the streamed chunks
    out = apply_shift(rows, shift, dim=1, inplace=True)
    assert out.data_ptr() == rows.data_ptr() and torch.equal(out, expected.t())
    assert apply_shift(block, None) is block
    # new data of a fitted block: the fitted shift, a zero shift for an unshifted block of a
    # shift="min" model (negatives clipped at 0), nothing for a shift=None model
    assert read_shift(shift, "min", 2) is shift
    assert torch.equal(read_shift(None, "min", 2), torch.zeros(2, dtype=torch.float64))
    assert read_shift(None, None, 2) is None
