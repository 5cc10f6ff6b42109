"""``save`` / ``load`` of fitted concept estimators (private).

Built on :mod:`captum_concepts._utils.persistence`: the learned tensors go into a
``torch.save`` file read back with ``weights_only=True`` (no pickle of arbitrary
objects, so loading can never run code), the constructor parameters and the small
fitted values into JSON metadata. The model is never saved: a loaded estimator
gets the ``model`` passed to ``load`` (or ``est.model = model`` later), and only
methods that run the model need it.

A layer given as a module is stored by its dotted name in the model.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ..._utils.layers import layer_name
from ..._utils.persistence import PathLike, load_state, save_state

__all__ = ["save_semantic_vector", "load_semantic_vector", "save_coupled_nmf", "load_coupled_nmf"]

_SV_KIND = "SemanticVector"
_CNMF_KIND = "CoupledNMFConcepts"


# ---------------------------------------------------------------------- small converters
def _layer_spec(model: Optional[nn.Module], layer: Any, argument: str) -> str:
    if isinstance(layer, str):
        return layer
    if isinstance(layer, nn.Module) and isinstance(model, nn.Module):
        name = layer_name(model, layer)
        if name is not None:
            return name
    raise TypeError(
        f"{argument} must be a dotted layer name (or a module of the model) to be saved, "
        f"got {type(layer).__name__}"
    )


def _plain_int(value: Any, argument: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise TypeError(f"{argument} must be an int or None to be saved, got {type(value).__name__}")


def _device(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _concept_names(names: List[Any]) -> List[List[Any]]:
    tagged = []
    for name in names:
        if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
            tagged.append(["int", int(name)])
        elif isinstance(name, str):
            tagged.append(["str", name])
        else:
            raise TypeError(
                f"concept names must be str or int to be saved, got {name!r} ({type(name).__name__})"
            )
    return tagged


def _untag_names(tagged: Any, path: str) -> List[Any]:
    if not isinstance(tagged, list) or not all(
        isinstance(t, list) and len(t) == 2 and t[0] in ("int", "str") for t in tagged
    ):
        raise ValueError(f"path={path!r} is corrupted: bad concept names")
    return [int(v) if kind == "int" else str(v) for kind, v in tagged]


def _need(store: Dict[str, Any], key: str, path: str) -> Any:
    if key not in store:
        raise ValueError(f"path={path!r} is corrupted: {key!r} is missing")
    return store[key]


def _check_fitted(est: Any, attribute: str) -> None:
    if not hasattr(est, attribute):
        raise RuntimeError(f"this {type(est).__name__} is not fitted yet; fit it before save()")


# ---------------------------------------------------------------------- SemanticVector
def save_semantic_vector(sv: Any, path: PathLike) -> None:
    """Write a fitted :class:`SemanticVector` to ``path`` (no model)."""
    _check_fitted(sv, "vectors_")
    meta = {
        "params": {
            "layer": _layer_spec(sv.model, sv.layer, "layer"),
            "batch_size": sv.batch_size,
            "device": _device(sv.device),
            "random_state": _plain_int(sv.random_state, "random_state"),
            "distributed": bool(sv.distributed),
        },
        "concept_names": _concept_names(sv.concept_names_),
        "layer_shape": [int(s) for s in sv.layer_shape_],
    }
    tensors = {
        "vectors": sv.vectors_,
        "activation_rates": sv.activation_rates_,
        "diversity": sv.diversity_,
        "n_examples": sv.n_examples_,
    }
    save_state(path, _SV_KIND, tensors, meta)


def load_semantic_vector(cls: type, path: PathLike, model: Optional[nn.Module]) -> Any:
    tensors, meta = load_state(path, _SV_KIND)
    path = str(path)
    params = _need(meta, "params", path)
    sv = cls(model, **params)
    names = _untag_names(_need(meta, "concept_names", path), path)
    shape = tuple(int(s) for s in _need(meta, "layer_shape", path))
    vectors = _need(tensors, "vectors", path)
    d = int(np.prod(shape))
    if vectors.dim() != 2 or tuple(vectors.shape) != (len(names), d):
        raise ValueError(
            f"path={path!r} is corrupted: vectors of shape {tuple(vectors.shape)} for "
            f"{len(names)} concepts of {d} units"
        )
    sv.concept_names_ = names
    sv.layer_shape_ = shape
    sv.vectors_ = vectors
    sv.activation_rates_ = _need(tensors, "activation_rates", path)
    sv.diversity_ = _need(tensors, "diversity", path)
    sv.n_examples_ = _need(tensors, "n_examples", path)
    return sv


# ---------------------------------------------------------------------- CoupledNMFConcepts
_CNMF_PARAMS = (
    "n_concepts",
    "include_pixels",
    "lambda_p",
    "lambda_o",
    "lambda_f",
    "group_sparsity",
    "normalize_columns",
    "solver",
    "max_iter",
    "tol",
    "pool",
    "shift",
    "batch_size",
    "distributed",
)


def _block_weights_param(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return [float(v) for v in value]


def save_coupled_nmf(est: Any, path: PathLike) -> None:
    """Write a fitted :class:`CoupledNMFConcepts` to ``path`` (no model)."""
    _check_fitted(est, "example_factors_")
    params: Dict[str, Any] = {name: getattr(est, name) for name in _CNMF_PARAMS}
    for name in ("n_concepts", "max_iter", "batch_size"):
        params[name] = int(params[name])
    params["layers"] = [_layer_spec(est.model, lay, f"layers[{j}]") for j, lay in enumerate(est.layers)]
    params["block_weights"] = _block_weights_param(est.block_weights)
    params["random_state"] = _plain_int(est.random_state, "random_state")
    params["device"] = _device(est.device)
    params["dtype"] = str(est.dtype).replace("torch.", "")
    shifts = {f"shift_{b}": s for b, s in enumerate(est.shift_) if s is not None}
    meta = {
        "params": params,
        "fitted": {
            "offsets": [int(o) for o in est._offsets],
            "n_pixel_blocks": int(est._n_pixel_blocks),
            "fitted_on_inputs": bool(est._fitted_on_inputs),
            "shifted_blocks": sorted(int(k.split("_")[1]) for k in shifts),
            "n_blocks": len(est.shift_),
            "loss_history": [float(v) for v in est.loss_history_],
            "n_iter": int(est.n_iter_),
            "converged": bool(est.converged_),
            "block_weights": [float(w) for w in est.block_weights_],
            "block_names": list(est.block_names_),
            "layer_names": list(est.layer_names_),
            "layer_shapes": [[int(s) for s in shape] for shape in est.layer_shapes_],
            "input_shape": None if est.input_shape_ is None else [int(s) for s in est.input_shape_],
        },
    }
    tensors = {"components": est._components, "example_factors": est.example_factors_, **shifts}
    save_state(path, _CNMF_KIND, tensors, meta)


def load_coupled_nmf(cls: type, path: PathLike, model: Optional[nn.Module]) -> Any:
    tensors, meta = load_state(path, _CNMF_KIND)
    path = str(path)
    params = dict(_need(meta, "params", path))
    dtype = getattr(torch, str(params.get("dtype")), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"path={path!r} is corrupted: unknown dtype {params.get('dtype')!r}")
    params["dtype"] = dtype
    est = cls(model=model, **params)
    fitted = _need(meta, "fitted", path)
    components = _need(tensors, "components", path)
    offsets: List[int] = [int(o) for o in _need(fitted, "offsets", path)]
    n_pixel = int(_need(fitted, "n_pixel_blocks", path))
    if (
        components.dim() != 2
        or len(offsets) < 2
        or offsets[0] != 0
        or offsets[-1] != components.shape[1]
        or components.shape[0] != est.n_concepts
    ):
        raise ValueError(f"path={path!r} is corrupted: factors do not match the saved block layout")
    factors = [components[:, a:b].t().contiguous() for a, b in zip(offsets[:-1], offsets[1:])]
    shifted = set(_need(fitted, "shifted_blocks", path))
    est.shift_ = [
        _need(tensors, f"shift_{b}", path) if b in shifted else None
        for b in range(int(_need(fitted, "n_blocks", path)))
    ]
    est._components = components
    est._offsets = offsets
    est._n_pixel_blocks = n_pixel
    est._fitted_on_inputs = bool(_need(fitted, "fitted_on_inputs", path))
    est.example_factors_ = _need(tensors, "example_factors", path)
    est.pixel_factors_ = factors[:n_pixel]
    est.neuron_factors_ = factors[n_pixel:]
    est.loss_history_ = list(_need(fitted, "loss_history", path))
    est.n_iter_ = int(_need(fitted, "n_iter", path))
    est.converged_ = bool(_need(fitted, "converged", path))
    est.block_weights_ = list(_need(fitted, "block_weights", path))
    est.block_names_ = list(_need(fitted, "block_names", path))
    est.layer_names_ = list(_need(fitted, "layer_names", path))
    est.layer_shapes_ = [tuple(s) for s in _need(fitted, "layer_shapes", path)]
    shape = _need(fitted, "input_shape", path)
    est.input_shape_ = None if shape is None else tuple(shape)
    return est
