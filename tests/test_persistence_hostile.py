"""Hostile estimator files and interrupted saves (issue 28, items 11-13).

Crafted files carry a valid checksum (computed as ``save_state`` does), so each case reaches the
check it is about; every one must give ``ValueError: path=...``, and loading must never materialise
more than the file holds. Saves: Ctrl-C inside torch's zip writer and inside the temporary file's
creation reaches the caller as ``KeyboardInterrupt`` with nothing left behind; a failed write names
the file; a killed save's temporary file is removed by the next save; the file's mode follows the
target's or the umask.
"""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch

from captum_concepts._utils import persistence
from captum_concepts._utils.persistence import FORMAT_VERSION, load_state, save_state
from captum_concepts.concept import SemanticVector
from captum_concepts.data import DigitsCNN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIND = "SemanticVector"


@pytest.fixture(scope="module")
def sv():
    torch.manual_seed(0)
    model = DigitsCNN(width=4, embedding_dim=6).eval()
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return SemanticVector(model, model.block3.pool, random_state=3).fit_from_labels((x, torch.arange(12) % 3))


@pytest.fixture()
def good(tmp_path, sv):
    sv.save(tmp_path / "good.pt")
    tensors, meta = load_state(tmp_path / "good.pt", KIND)
    meta.pop("package_version")
    return tensors, meta


def _write(path, tensors, meta_json: str, version: int = FORMAT_VERSION, checksum=None) -> str:
    """A file as ``save_state`` writes it, from raw metadata JSON (valid checksum unless given)."""
    if checksum is None:
        checksum = persistence._checksum(KIND, version, meta_json, tensors)
    payload = {
        "magic": "captum_concepts",
        "format_version": version,
        "package_version": "0",
        "kind": KIND,
        "meta": meta_json,
        "tensors": tensors,
        "checksum": checksum,
    }
    torch.save(payload, path)
    return str(path)


def _param(good, tmp_path, name, encoded_json: str) -> str:
    """The good file with parameter ``name`` replaced by the raw JSON ``encoded_json``."""
    tensors, meta = good
    meta = dict(meta, params=dict(meta["params"], **{name: "@@"}))
    return _write(tmp_path / "bad.pt", tensors, json.dumps(meta).replace('"@@"', encoded_json))


# ---------------------------------------------------------------------- crafted content, valid checksum
CRAFTED = {
    # torch.device("nonsense") raised RuntimeError
    "device nonsense": lambda g, p: _param(g, p, "device", '{"__device__": "nonsense"}'),
    # np.int8(10**30) raised OverflowError
    "numpy overflow": lambda g, p: _param(g, p, "random_state", '{"__numpy__": "int8", "value": 1e300}'),
    "numpy int overflow": lambda g, p: _param(
        g, p, "random_state", '{"__numpy__": "int8", "value": 1000000000000000000000000000000}'
    ),
    # json.loads / the decoder ran into RecursionError
    "deep nesting": lambda g, p: _param(g, p, "batch_size", "[" * 100_000 + "]" * 100_000),
    # a list in the list of unsaved parameters raised TypeError (unhashable)
    "unhashable unsaved": lambda g, p: _write(
        p / "bad.pt", g[0], json.dumps(dict(g[1], unsaved_params=[["batch_size"]]))
    ),
    # the same concept twice was accepted
    "duplicate names": lambda g, p: _write(
        p / "bad.pt",
        g[0],
        json.dumps(
            dict(g[1], fitted=dict(g[1]["fitted"], concept_names=[g[1]["fitted"]["concept_names"][0]] * 3))
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_files_with_a_valid_checksum_give_a_value_error_naming_the_path(tmp_path, good, case):
    path = CRAFTED[case](good, tmp_path)
    with pytest.raises(ValueError, match=r"path=.*bad\.pt.* is corrupted"):
        SemanticVector.load(path)


def test_unknown_overrides_and_a_model_for_no_model_class_stay_type_errors(tmp_path, sv):
    sv.save(tmp_path / "good.pt")
    with pytest.raises(TypeError, match="unknown parameters"):
        SemanticVector.load(tmp_path / "good.pt", colour=3)


def test_a_stride_0_view_of_2_to_the_40_floats_is_refused_before_it_is_materialised(tmp_path, good):
    tensors, meta = good
    huge = torch.zeros(1).as_strided((2**40,), (0,))  # 4 TiB as a view of one float
    path = _write(tmp_path / "bad.pt", dict(tensors, vectors=huge), json.dumps(meta), checksum="0" * 64)
    assert os.path.getsize(path) < 20_000
    with pytest.raises(ValueError, match=r"path=.*bad\.pt.*'vectors'.*stride-0"):
        SemanticVector.load(path)


_PEAK = textwrap.dedent(
    """
    import resource, sys
    import torch
    from captum_concepts.concept import SemanticVector
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        SemanticVector.load(sys.argv[1])
    except ValueError as err:
        assert "path=" in str(err), err
        print("refused", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    else:
        print("loaded")
    """
)


def _peak_mib(path) -> str:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.split()


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB is Linux's")
def test_hostile_files_are_refused_without_allocating_what_they_claim(tmp_path, good):
    tensors, meta = good
    meta_json = json.dumps(meta)
    # 256 MiB as a stride-0 view of one float (the checksum step materialised it: no valid checksum
    # is needed to get there)
    view = torch.zeros(1).as_strided((2**26,), (0,))
    view_path = _write(tmp_path / "view.pt", dict(tensors, vectors=view), meta_json, checksum="0" * 64)
    # a record deflated from 64 MiB of zeros to a few hundred KiB (a zip bomb: torch inflated it)
    bomb = tmp_path / "bomb.pt"
    _write(tmp_path / "plain.pt", dict(tensors, vectors=torch.zeros(2**24)), meta_json, checksum="0" * 64)
    with (
        zipfile.ZipFile(tmp_path / "plain.pt") as src,
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst,
    ):
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert os.path.getsize(bomb) < 2**20
    for path in (view_path, bomb):
        status, *peak = _peak_mib(path)
        assert status == "refused", path
        assert int(peak[0]) < 32, f"{path}: {peak[0]} MiB allocated to refuse it"


def test_format_1_files_get_advice_that_can_be_followed(tmp_path, good):
    tensors, meta = good
    path = _write(tmp_path / "old.pt", tensors, json.dumps(meta), version=1)
    with pytest.raises(ValueError, match=r"path=.*old\.pt.*format version 1") as info:
        SemanticVector.load(path)
    message = str(info.value)
    assert "load it with that version and save it again" not in message
    assert "Fit the estimator again" in message and "no version converts it" in message


# ---------------------------------------------------------------------- interrupted and failed saves
class _InterruptingFile(io.RawIOBase):
    """A file whose ``n``-th write sends SIGINT to this process (Ctrl-C inside torch's writer)."""

    def __init__(self, f, n: int) -> None:
        self.f, self.n, self.calls = f, n, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), signal.SIGINT)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()

    def fileno(self) -> int:
        return self.f.fileno()

    def close(self) -> None:
        self.f.close()
        super().close()


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_ctrl_c_inside_the_zip_writer_reaches_the_caller_as_keyboard_interrupt(tmp_path, sv, monkeypatch, n):
    path = tmp_path / "est.pt"
    sv.save(path)
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _InterruptingFile(real_fdopen(fd, *a, **k), n))
    with pytest.raises(KeyboardInterrupt):
        sv.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["est.pt"]


def test_ctrl_c_while_the_temporary_file_is_created_leaves_nothing(tmp_path, sv, monkeypatch):
    path = tmp_path / "est.pt"
    real_open = os.open

    def open_then_interrupt(name, flags, *args, **kwargs):
        fd = real_open(name, flags, *args, **kwargs)
        if flags & os.O_CREAT and str(tmp_path) in str(name):
            os.kill(os.getpid(), signal.SIGINT)
        return fd

    monkeypatch.setattr(os, "open", open_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        sv.save(path)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


_FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys, torch
    from captum_concepts._utils.persistence import save_state
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    try:
        save_state(sys.argv[1], "Thing", {"a": torch.zeros(1_000_000)}, {})
    except OSError as err:
        print(type(err).__name__, err.errno, str(err))
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="POSIX file-size limit")
def test_a_failed_write_names_the_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "est.pt"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(path)], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("OSError"), run.stdout + run.stderr[-2000:]
    assert str(path) in run.stdout and "could not save" in run.stdout
    assert list(tmp_path.iterdir()) == []


_KILLED = textwrap.dedent(
    """
    import os, signal, sys, torch
    from captum_concepts._utils.persistence import save_state
    os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # killed once the data is written
    save_state(sys.argv[1], "Thing", {"a": torch.zeros(100_000)}, {})
    """
)


@pytest.mark.skipif(os.name != "posix", reason="stale temporary files are recognised by POSIX pids")
def test_a_killed_save_leaves_a_temporary_file_that_the_next_save_removes(tmp_path):
    path = tmp_path / "est.pt"
    save_state(path, "Thing", {"a": torch.ones(3)}, {})
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-c", _KILLED, str(path)], capture_output=True, env=env)
    assert run.returncode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir() if p.name != "est.pt"]
    assert len(left) == 1 and left[0].name.startswith(".est.pt.") and left[0].stat().st_size > 400_000
    # a save in progress in a running process (here: a sleeping one) is left alone
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / left[0].name.replace(f"-{left[0].name.split('-')[1]}-", f"-{sleeper.pid}-")
        busy.write_bytes(b"in progress")
        save_state(path, "Thing", {"a": torch.ones(3)}, {})
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["est.pt", busy.name])
    finally:
        sleeper.kill()
        sleeper.wait()
    assert torch.equal(load_state(path, "Thing")[0]["a"], torch.ones(3))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_the_saved_file_keeps_the_targets_mode_or_the_umasks(tmp_path):
    path = tmp_path / "est.pt"
    old = os.umask(0o022)
    try:
        save_state(path, "Thing", {"a": torch.ones(3)}, {})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # as open() / torch.save give
        os.chmod(path, 0o640)
        save_state(path, "Thing", {"a": torch.ones(3)}, {})
        assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the target's mode is kept
    finally:
        os.umask(old)


def test_round_trip_still_exact(tmp_path, sv):
    sv.save(tmp_path / "a.pt")
    back = SemanticVector.load(tmp_path / "a.pt")
    assert back.concept_names_ == sv.concept_names_
    assert torch.equal(back.vectors_, sv.vectors_)
    assert np.array_equal(back.layer_shape_, sv.layer_shape_)
