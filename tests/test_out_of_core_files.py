"""Out-of-core activation files: nothing left on disk after any kill; float16 overflow is named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from captum_concepts.concept import ActivationStore, CoupledNMFConcepts, OutOfCore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_out_of_core_fit_leaves_no_file(tmp_path, sig):
    folder = tmp_path / "store"
    folder.mkdir()
    script = textwrap.dedent(
        f"""
        import sys, time, torch
        from captum_concepts.concept import CoupledNMFConcepts, OutOfCore

        def slow_batches():
            for i in range(1000):
                if i == 3:
                    print("writing", flush=True)
                yield torch.rand(8, 1, 8, 8)
                time.sleep(0.05)

        est = CoupledNMFConcepts(2, out_of_core=OutOfCore("64MB", directory={str(folder)!r}))
        est.fit(slow_batches())
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    try:
        assert proc.stdout.readline().strip() == b"writing"
        os.kill(proc.pid, sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -sig
    assert list(folder.iterdir()) == []


def test_an_anonymous_store_has_no_name_and_reads_back(tmp_path):
    store = ActivationStore(None, [3, 2], directory=str(tmp_path))
    rows = [torch.rand(5, 3), torch.rand(5, 2)]
    store.append(rows)
    assert list(tmp_path.iterdir()) == []  # already unlinked while in use
    assert torch.equal(torch.from_numpy(store.as_array().copy()), torch.cat(rows, dim=1))
    buffer = torch.empty(2, 5)
    got = torch.cat([r.clone() for _, _, r in store.chunks(2, buffer)])
    assert torch.equal(got, torch.cat(rows, dim=1))
    store.delete()


def test_float16_storage_overflow_is_named(tmp_path):
    x = torch.rand(6, 1, 4, 4) * 1e5  # above float16's 65504, finite
    est = CoupledNMFConcepts(2, max_iter=2, out_of_core=OutOfCore("64MB", storage_dtype=torch.float16))
    with pytest.raises(ValueError, match=r"pixels\[0\] holds values beyond \+-65504.*overflow float16"):
        est.fit(x)
    fine = CoupledNMFConcepts(2, max_iter=2, out_of_core=OutOfCore("64MB", storage_dtype=torch.float16))
    assert torch.isfinite(fine.fit(x / 10).example_factors_).all()


def test_store_values_that_are_not_finite_are_named():
    store = ActivationStore(None, [2, 2], n_pixel_blocks=1)
    store.append([torch.ones(3, 2), torch.tensor([[1.0, float("inf")]] * 3)])
    with pytest.raises(ValueError, match=r"activation_blocks\[0\] contains NaN or infinite"):
        CoupledNMFConcepts(2).fit_store(store)
