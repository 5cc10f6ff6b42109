"""Safe, verified, atomic persistence for fitted estimators: tensors plus JSON metadata, no pickle.

Files are written with ``torch.save`` of a plain dictionary of tensors and
strings, and read back with ``torch.load(weights_only=True)``, which refuses
arbitrary Python objects: loading a file can never execute code. Each file
records the package version, the estimator kind, a format version and a
SHA-256 checksum of everything else (kind, format version, metadata, and every
tensor's name, dtype, shape and bytes), so a damaged file -- one flipped bit
in the tensor data included -- is rejected with a ``ValueError`` naming the
file and the problem, as is a file of another kind or format.

Writing is atomic: the data goes to a new temporary file (``tempfile.mkstemp``)
in the target's folder, is flushed and ``fsync``-ed, then ``os.replace``-d onto
the target; the temporary file is removed on any failure, so an existing file
at ``path`` is either kept or fully replaced, and no other file is touched.
When ``path`` is a symbolic link, the link is followed: the file it points to
is replaced (atomically, in that file's folder) and the link is kept.

:func:`encode_params` / :func:`decode_params` turn constructor parameters into
JSON and back, keeping their types (tuples, numpy scalars and numeric arrays,
torch dtypes and devices).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Dict, List, Tuple, Union

import numpy as np
import torch

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
    fd, tmp = tempfile.mkstemp(prefix=".captum_concepts-", suffix=".tmp", dir=os.path.dirname(target))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
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
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle opcodes, forbidden globals...
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
            f"path={path!r} has format version {version}, written by an older captum_concepts without "
            f"checksums; load it with that version and save it again"
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
    if payload.get("checksum") != _checksum(kind, version, meta_json, tensors):
        raise ValueError(
            f"path={path!r} is corrupted: its checksum does not match its content (the file was "
            "damaged or edited after it was saved)"
        )
    try:
        meta = json.loads(meta_json)
    except ValueError:
        raise ValueError(f"path={path!r} is corrupted: its metadata is not valid JSON") from None
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
    """Inverse of :func:`encode_params` (unsaved parameters keep the :data:`UNSAVED` marker)."""
    if not isinstance(encoded, dict):
        raise ValueError(f"{where} is corrupted: its parameters are not a mapping")
    return {str(name): _decode(value, where) for name, value in encoded.items()}
