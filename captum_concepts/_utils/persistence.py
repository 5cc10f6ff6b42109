"""Safe persistence for fitted estimators: tensors plus JSON metadata, no pickle.

Files are written with ``torch.save`` of a plain dictionary of tensors and
strings, and read back with ``torch.load(weights_only=True)``, which refuses
arbitrary Python objects: loading a file can never execute code. Each file
records the package version, the estimator kind and a format version, so a
file saved by a different class or an incompatible format is rejected with a
clear error.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Tuple, Union

import torch

__all__ = ["FORMAT_VERSION", "save_state", "load_state"]

FORMAT_VERSION = 1
_MAGIC = "captum_concepts"

PathLike = Union[str, "os.PathLike[str]"]


def save_state(path: PathLike, kind: str, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
    """Write ``tensors`` (name -> tensor) and JSON-serialisable ``meta`` to ``path``.

    Tensors are moved to CPU and made contiguous; ``meta`` must survive
    ``json.dumps`` (numbers, strings, lists, dicts, None).
    """
    from captum_concepts import __version__

    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"tensors[{name!r}] must be a torch.Tensor, got {type(value).__name__}")
    try:
        meta_json = json.dumps(meta)
    except TypeError as err:
        raise TypeError(f"meta must be JSON-serialisable: {err}") from None
    payload = {
        "magic": _MAGIC,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "kind": kind,
        "meta": meta_json,
        "tensors": {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
    }
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)  # never leave a half-written file under the real name


def load_state(path: PathLike, kind: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a file written by :func:`save_state` for an estimator of ``kind``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated, corrupted, not a captum_concepts file,
            of another kind, or of a newer format version.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path={path!r} does not exist")
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
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"path={path!r} has format version {version!r}; this captum_concepts reads up to "
            f"{FORMAT_VERSION}: upgrade the package"
        )
    if payload.get("kind") != kind:
        raise ValueError(f"path={path!r} holds a {payload.get('kind')!r}, not a {kind!r}")
    tensors = payload.get("tensors")
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise ValueError(f"path={path!r} is corrupted: its tensors are missing")
    try:
        meta = json.loads(payload.get("meta", ""))
    except (TypeError, ValueError):
        raise ValueError(f"path={path!r} is corrupted: its metadata is not valid JSON") from None
    meta["package_version"] = payload.get("package_version")
    return tensors, meta
