"""Safe, verified, atomic persistence for fitted estimators: tensors plus JSON metadata, no pickle.

Files are written with ``torch.save`` of a plain dictionary of tensors and
strings, and read back with ``torch.load(weights_only=True)``, which refuses
arbitrary Python objects: loading a file can never execute code. Each file
records the package version, the estimator kind, a format version and a
SHA-256 checksum of everything else (kind, format version, metadata, and every
tensor's name, dtype, shape and bytes), so a damaged file -- one flipped bit
in the tensor data included -- is rejected with a ``ValueError`` naming the
file and the problem, as is a file of another kind or format.

Writing is atomic: the data goes to a new hidden temporary file in the
target's folder, is flushed and ``fsync``-ed, then ``os.replace``-d onto the
target; the temporary file is removed on any failure, so an existing file at
``path`` is either kept or fully replaced, and no other file is touched. Ctrl-C
during the write is held back until the write ends and then reaches the caller
as ``KeyboardInterrupt`` (torch's zip writer would turn it into a
``RuntimeError`` half-way); a failed write (disk full) raises ``OSError`` naming
``path``. A save killed outright leaves its temporary file behind: the next save
to the same path removes the temporary files of processes of this host that no
longer run. The file gets the target's permission bits when it replaces one,
else those of a new file under the umask (as ``open`` gives).
When ``path`` is a symbolic link, the link is followed: the file it points to
is replaced (atomically, in that file's folder) and the link is kept.

Reading never materialises more than the file holds: before anything else the
zip's records must be stored uncompressed (no record larger than the file) and
every tensor must fit in its storage without overlapping itself (a stride-0
view of ``2**40`` floats in a 5 KB file is refused, not allocated); any
problem with a file's content is a ``ValueError`` naming the file.

:func:`encode_params` / :func:`decode_params` turn constructor parameters into
JSON and back, keeping their types (tuples, numpy scalars and numeric arrays,
torch dtypes and devices).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import zipfile
from typing import Any, BinaryIO, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from .hooks import run_uninterrupted

__all__ = [
    "FORMAT_VERSION",
    "PathLike",
    "save_state",
    "load_state",
    "encode_params",
    "decode_params",
    "UNSAVED",
]

FORMAT_VERSION = 2  # 2: checksums, typed parameters
_MAGIC = "captum_concepts"

PathLike = Union[str, "os.PathLike[str]"]

_DTYPES = {
    str(d): d
    for d in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    )
}


def _checksum(kind: str, version: int, meta_json: str, tensors: Dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([kind, version, meta_json]).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _target(path: PathLike) -> str:
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    real = os.path.realpath(path)  # a symbolic link is followed: its target is replaced
    if os.path.isdir(real):
        raise IsADirectoryError(f"path={path!r} is a folder; give a file name")
    folder = os.path.dirname(real) or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"path={path!r}: the folder {folder!r} does not exist")
    return real


def save_state(path: PathLike, kind: str, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
    """Write ``tensors`` (name -> tensor) and JSON-serialisable ``meta`` to ``path``, atomically.

    Tensors are moved to CPU and made contiguous; ``meta`` must survive
    ``json.dumps`` (numbers, strings, lists, dicts, None).
    """
    from captum_concepts import __version__

    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"tensors[{name!r}] must be a torch.Tensor, got {type(value).__name__}")
    try:
        meta_json = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"meta must be JSON-serialisable: {err}") from None
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    payload = {
        "magic": _MAGIC,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "kind": kind,
        "meta": meta_json,
        "tensors": data,
        "checksum": _checksum(kind, FORMAT_VERSION, meta_json, data),
    }
    target = _target(path)
    _remove_stale_temporaries(target)
    created: List[str] = []
    writer = _Writer()
    try:
        # Ctrl-C inside torch's zip writer comes out as a RuntimeError, inside the temporary
        # file's creation it would leave the file behind: it is held back until both are done
        run_uninterrupted(_write_temporary, target, payload, writer, created)
        os.replace(created[0], target)
    except BaseException as err:
        if created and os.path.lexists(created[0]):
            os.remove(created[0])
        failed = writer.error or err
        if isinstance(failed, OSError) and failed.errno is not None and failed.filename is None:
            raise OSError(
                failed.errno, f"{failed.strerror}; could not save (the file is unchanged)", target
            ) from err
        if isinstance(err, RuntimeError):
            raise RuntimeError(f"path={target!r}: could not save (the file is unchanged): {err}") from err
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(os.path.dirname(target), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------- writing
_TEMP_SUFFIX = ".captum_concepts.tmp"
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


class _Writer:
    """The file object given to ``torch.save``: it keeps the ``OSError`` of a failed write (disk
    full), which torch's zip writer replaces by a ``RuntimeError`` without the file's name."""

    def __init__(self) -> None:
        self.f: Optional[BinaryIO] = None
        self.error: Optional[OSError] = None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)  # type: ignore[union-attr]
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()  # type: ignore[union-attr]


def _write_temporary(target: str, payload: Dict[str, Any], writer: _Writer, created: List[str]) -> None:
    """Write ``payload`` to a new temporary file next to ``target``, flushed and ``fsync``-ed; its
    name is appended to ``created`` as soon as it exists (the caller removes it on failure)."""
    fd, tmp = _create_temporary(target)
    created.append(tmp)
    with os.fdopen(fd, "wb") as f:
        writer.f = f
        torch.save(payload, writer)  # type: ignore[arg-type]
        f.flush()
        os.fsync(f.fileno())


def _temporary_prefix(target: str) -> str:
    """``.<name>.`` of the target (shortened so that the whole name stays under 255 bytes)."""
    return "." + os.path.basename(target)[:120] + "."


def _create_temporary(target: str) -> Tuple[int, str]:
    """A new hidden file next to ``target``, ``.<name>.<host>-<pid>-<random>.captum_concepts.tmp``,
    opened for writing, with ``target``'s permission bits if it exists (else ``0o666`` under the
    umask, as ``open`` gives)."""
    folder = os.path.dirname(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        mode: Optional[int] = os.stat(target).st_mode & 0o7777
    except OSError:
        mode = None
    while True:
        name = f"{_temporary_prefix(target)}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{_TEMP_SUFFIX}"
        tmp = os.path.join(folder, name)
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        if mode is not None and hasattr(os, "fchmod"):
            try:
                os.fchmod(fd, mode)
            except OSError:
                pass
        return fd, tmp


def _remove_stale_temporaries(target: str) -> None:
    """Remove the temporary files of earlier saves to ``target`` whose process (on this host) no
    longer runs: a save killed outright (SIGKILL, power loss) leaves one. Files of running
    processes (a save in progress) and of other hosts are kept. POSIX only."""
    if os.name != "posix":
        return
    folder, prefix = os.path.dirname(target), _temporary_prefix(target)
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(_TEMP_SUFFIX)]
    except OSError:
        return
    for name in names:
        host, _, rest = name[len(prefix) : -len(_TEMP_SUFFIX)].partition("-")
        pid = rest.partition("-")[0]
        if host != _HOST or not pid.isdigit() or int(pid) == os.getpid() or _running(int(pid)):
            continue
        try:
            os.remove(os.path.join(folder, name))
        except OSError:
            pass


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it runs
        return True
    return True


# ---------------------------------------------------------------------- reading
def _check_records(path: str) -> None:
    """Refuse a zip whose records could expand beyond the file: every record stored uncompressed."""
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as err:
        raise ValueError(
            f"path={path!r} is not a readable captum_concepts file (corrupted, truncated or not saved by "
            f"captum_concepts): {type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
        ) from None
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
            raise ValueError(
                f"path={path!r} is corrupted: its record {info.filename!r} is compressed or larger than the "
                "file (captum_concepts writes uncompressed records)"
            )


def _check_extents(path: str, tensors: Dict[str, torch.Tensor]) -> None:
    """Refuse tensors that claim more elements than their storage holds (stride-0 or overlapping
    views), before anything reads them: the checksum would materialise them."""
    for name, t in tensors.items():
        need = t.numel() * t.element_size()
        have = t.untyped_storage().nbytes()
        if t.layout != torch.strided or t.is_quantized or need > have:
            raise ValueError(
                f"path={path!r} is corrupted: tensor {name!r} of shape {tuple(t.shape)} needs {need} "
                f"bytes but its storage holds {have} (an overlapping or stride-0 view)"
            )


def load_state(path: PathLike, kind: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read and verify a file written by :func:`save_state` for an estimator of ``kind``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated, damaged (checksum mismatch), not a
            captum_concepts file, of another kind, or of another format version.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path={path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"path={path!r} is a folder, not a captum_concepts file")
    _check_records(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle opcodes, forbidden globals, deep nesting...
        raise ValueError(
            f"path={path!r} is not a readable captum_concepts file (corrupted, truncated or "
            f"not saved by captum_concepts): {type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
        ) from None
    if not isinstance(payload, dict) or payload.get("magic") != _MAGIC:
        raise ValueError(f"path={path!r} was not saved by captum_concepts")
    version = payload.get("format_version")
    if type(version) is not int or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(
            f"path={path!r} has format version {version!r}; this captum_concepts reads format "
            f"{FORMAT_VERSION} (a larger version needs a newer package)"
        )
    if version < FORMAT_VERSION:
        raise ValueError(
            f"path={path!r} has format version {version}, written by an earlier captum_concepts without "
            "checksums: its content cannot be verified, so it is not read, and no version converts it (the "
            "versions that read format 1 also write format 1). Fit the estimator again with this version "
            "and save it"
        )
    if payload.get("kind") != kind:
        raise ValueError(f"path={path!r} holds a {payload.get('kind')!r}, not a {kind!r}")
    tensors = payload.get("tensors")
    meta_json = payload.get("meta")
    if (
        not isinstance(tensors, dict)
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items())
        or not isinstance(meta_json, str)
    ):
        raise ValueError(f"path={path!r} is corrupted: its tensors or metadata are missing")
    _check_extents(path, tensors)
    if payload.get("checksum") != _checksum(kind, version, meta_json, tensors):
        raise ValueError(
            f"path={path!r} is corrupted: its checksum does not match its content (the file was "
            "damaged or edited after it was saved)"
        )
    try:
        meta = json.loads(meta_json)
    except (ValueError, RecursionError):
        raise ValueError(
            f"path={path!r} is corrupted: its metadata is not valid JSON (or nested too deeply)"
        ) from None
    if not isinstance(meta, dict):
        raise ValueError(f"path={path!r} is corrupted: its metadata is not a mapping")
    meta["package_version"] = payload.get("package_version")
    return tensors, meta


# ---------------------------------------------------------------------- parameters
UNSAVED = "__unsaved__"


def _encode(value: Any) -> Any:
    """JSON form of one parameter value, or raise ``TypeError`` when it has none."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) and type(value) in (int, float):
        if isinstance(value, float) and not np.isfinite(value):
            return {"__float__": repr(value)}
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return {"__numpy__": type(value).__name__, "value": value.item()}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return {"__ndarray__": value.dtype.str, "value": value.tolist()}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value)}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, (list, tuple)):
        items = [_encode(v) for v in value]
        return items if type(value) is list else {"__tuple__": items}
    raise TypeError(type(value).__name__)


def encode_params(params: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """Constructor parameters -> ``(JSON-able dict, names of parameters that cannot be saved)``.

    A parameter with no JSON form (a callable, an arbitrary object) is stored as
    the marker :data:`UNSAVED` and listed; the estimator's ``load`` then takes
    it as a keyword argument.
    """
    out: Dict[str, Any] = {}
    unsaved: List[str] = []
    for name, value in params.items():
        try:
            out[name] = _encode(value)
        except TypeError:
            out[name] = UNSAVED
            unsaved.append(name)
    return out, unsaved


def _decode(value: Any, where: str) -> Any:
    if isinstance(value, list):
        return [_decode(v, where) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"__tuple__"} and isinstance(value["__tuple__"], list):
        return tuple(_decode(v, where) for v in value["__tuple__"])
    if set(value) == {"__numpy__", "value"}:
        kind = getattr(np, str(value["__numpy__"]), None)
        if isinstance(kind, type) and issubclass(kind, (np.integer, np.floating, np.bool_)):
            return kind(value["value"])
    if set(value) == {"__ndarray__", "value"}:
        try:
            dtype = np.dtype(str(value["__ndarray__"]))
            if dtype.kind in "biuf":
                return np.asarray(value["value"], dtype=dtype)
        except (TypeError, ValueError):
            pass
    if set(value) == {"__dtype__"} and value["__dtype__"] in _DTYPES:
        return _DTYPES[value["__dtype__"]]
    if set(value) == {"__device__"} and isinstance(value["__device__"], str):
        return torch.device(value["__device__"])
    if set(value) == {"__float__"} and value["__float__"] in ("inf", "-inf", "nan"):
        return float(value["__float__"])
    raise ValueError(f"{where} is corrupted: unknown parameter encoding {value!r}")


def decode_params(encoded: Any, where: str) -> Dict[str, Any]:
    """Inverse of :func:`encode_params` (unsaved parameters keep the :data:`UNSAVED` marker).

    Raises:
        ValueError: naming ``where``, for any value that does not decode (an unknown encoding, a
            device string torch refuses, a number out of its numpy type's range, nesting too deep).
    """
    if not isinstance(encoded, dict):
        raise ValueError(f"{where} is corrupted: its parameters are not a mapping")
    try:
        return {str(name): _decode(value, where) for name, value in encoded.items()}
    except (TypeError, OverflowError, RuntimeError, RecursionError) as err:  # RecursionError: a RuntimeError
        raise ValueError(
            f"{where} is corrupted: a parameter does not decode ({type(err).__name__}: {str(err)[:200]})"
        ) from None
