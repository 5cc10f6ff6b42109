"""Load a user's model, weights, images and layers for ``discover`` / ``scores`` / ``saliency``.

torchvision is imported here, lazily, only when an image folder or a torchvision
architecture is asked for: ``import captum_concepts`` never imports it.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

import torch
from torch import nn

from .._utils.layers import resolve_layer
from .._utils.validation import InvalidParameterError, check_int


class CLIError(Exception):
    """A mistake in what the user asked for: printed as one line, exit status 2."""


def check_flag_int(value: Any, flag: str, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """``value`` of the option ``flag`` through the shared :func:`check_int`, as a :class:`CLIError`."""
    try:
        return check_int(value, flag, low=low, high=high)
    except InvalidParameterError as err:
        raise CLIError(str(err)) from None


@dataclass
class ImageData:
    images: torch.Tensor  # (N, C, H, W) in [0, 1] (before normalisation)
    labels: torch.Tensor  # (N,)
    class_names: List[str]
    mean: Optional[torch.Tensor]  # (C,) normalisation applied inside the wrapped model, or None
    std: Optional[torch.Tensor]


def load_model(spec: str, num_classes: Optional[int] = None) -> nn.Module:
    """``module.path:factory`` (called with no argument) or a torchvision architecture name."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise CLIError(f"cannot import module {module_name!r} for --model {spec!r}: {err}") from None
        factory = module
        for part in attr.split("."):
            if not hasattr(factory, part):
                raise CLIError(f"module {module_name!r} has no attribute {attr!r} (from --model {spec!r})")
            factory = getattr(factory, part)
        is_factory = callable(factory) and not isinstance(factory, nn.Module)
        model = _call_factory(factory, spec) if is_factory else factory
        if not isinstance(model, nn.Module):
            raise CLIError(f"--model {spec!r} must give a torch.nn.Module, got {type(model).__name__}")
        return model
    try:
        from torchvision import models
    except ImportError:
        raise CLIError(
            f"--model {spec!r} looks like a torchvision architecture but torchvision is not installed; "
            "install it or pass module:factory"
        ) from None
    names = models.list_models()
    if spec not in names:
        import difflib

        close = difflib.get_close_matches(spec, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise CLIError(
            f"unknown model {spec!r}: not a torchvision architecture and not module:factory.{hint}"
        )
    kwargs = {"weights": None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return models.get_model(spec, **kwargs)


def _call_factory(factory: Any, spec: str) -> Any:
    """``factory()``; exiting the program or failing is a mistake in ``--model``, not a result."""
    try:
        return factory()
    except SystemExit:
        raise CLIError(
            f"--model {spec!r}: calling it exited the program (SystemExit); --model must name a function "
            "that returns a torch.nn.Module"
        ) from None
    except Exception as err:
        raise CLIError(f"--model {spec!r}: calling the factory failed: {_first_line(err)}") from None


def check_output_folder(folder: str) -> None:
    """``--out`` must be a folder this process can create and write into (checked before any work)."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise CLIError(f"--out {folder!r} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or _first_line(err)
        raise CLIError(f"--out {folder!r} is not a writable folder: {reason}") from None


def load_weights(model: nn.Module, path: Optional[str]) -> None:
    """Load a state dict saved with ``torch.save`` (read with ``weights_only=True``: no code runs)."""
    if path is None:
        return
    if os.path.isdir(path):
        raise CLIError(f"--weights {path!r} is a folder; pass the state-dict file saved with torch.save")
    if not os.path.isfile(path):
        raise CLIError(f"weights file {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors: the message is long, keep its first line
        raise CLIError(f"cannot read weights file {path!r}: {_first_line(err)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CLIError(f"weights file {path!r} must hold a state dict (parameter name -> tensor)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} with another shape (e.g. {'; '.join(wrong[:2])})")
        raise CLIError(f"weights in {path!r} do not match the model: " + ", ".join(parts))
    model.load_state_dict(state)


def load_images(
    folder: str,
    image_size: int,
    channels: int,
    max_images: int,
    normalize: str,
    seed: int,
    progress: bool = True,
) -> ImageData:
    """Read an ImageFolder tree (``folder/<class>/<image>``), resized and center-cropped to
    ``image_size``, at most ``max_images`` of them drawn evenly over the classes."""
    root = Path(folder)
    if not root.exists():
        raise CLIError(f"image folder {folder!r} does not exist")
    if not root.is_dir():
        raise CLIError(f"--images {folder!r} is not a folder")
    try:
        from torchvision import datasets, transforms
    except ImportError:
        raise CLIError("reading an image folder needs torchvision: pip install torchvision") from None
    steps: List[Any] = [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    if channels == 1:
        steps.append(_Grayscale())
    steps += [transforms.ToTensor(), _Channels(channels)]
    try:
        folder_type = _visible_image_folder(datasets)
        dataset = folder_type(str(root), transform=transforms.Compose(steps), loader=_read_image)
    except (FileNotFoundError, RuntimeError) as err:
        raise CLIError(
            f"no images found in {folder!r}: expected one sub-folder per class with image files inside "
            f"(ImageFolder layout: {folder}/<class>/<image>.png); {_first_line(err)}"
        ) from None
    if len(dataset) == 0:
        raise CLIError(f"no images found in {folder!r}")
    targets = torch.tensor(dataset.targets)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=gen)
    # round-robin over classes so that a small max_images still sees every class
    per_class = [order[targets[order] == c] for c in range(len(dataset.classes))]
    picked: List[int] = []
    depth = 0
    while len(picked) < min(max_images, len(dataset)):
        for idx in per_class:
            if depth < len(idx) and len(picked) < max_images:
                picked.append(int(idx[depth]))
        depth += 1
    images, labels = [], []
    from tqdm.auto import tqdm

    for i in tqdm(picked, desc="reading images", leave=False, disable=not progress):
        img, label = _read_item(dataset, i)
        images.append(img)
        labels.append(label)
    mean = std = None
    if normalize == "imagenet":
        mean = torch.tensor([0.485, 0.456, 0.406][:channels] if channels == 3 else [0.449])
        std = torch.tensor([0.229, 0.224, 0.225][:channels] if channels == 3 else [0.226])
    return ImageData(torch.stack(images), torch.tensor(labels), list(dataset.classes), mean, std)


_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _read_image(path: str) -> Any:
    """A PIL image in ``[0, 1]`` whatever its bit depth: 16-bit greyscale becomes a float image
    (mode ``"F"``) scaled by ``1 / 65535``; every other mode is converted to RGB as usual."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode in _SIXTEEN_BIT:
            values = np.asarray(img, dtype=np.float32) / 65535.0
            return Image.fromarray(values.clip(0.0, 1.0))  # float32: mode "F"
        if img.mode == "F":
            return img.copy()
        return img.convert("RGB")


def _read_item(dataset: Any, index: int) -> Any:
    path = dataset.samples[index][0]
    try:
        return dataset[index]
    except (OSError, ValueError, SyntaxError) as err:  # PIL: unidentified, truncated or broken files
        raise CLIError(f"cannot read image {path!r}: {_first_line(err)}") from None


class _Grayscale:
    """One channel; a float (16-bit) image already has one."""

    def __call__(self, img: Any) -> Any:
        return img if img.mode in ("F", "L") else img.convert("L")


class _Channels:
    """A one-channel tensor repeated to ``channels`` (16-bit greyscale for an RGB model)."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return t.expand(self.channels, *t.shape[1:]).contiguous() if t.shape[0] == 1 else t


def _visible_image_folder(datasets: Any) -> Any:
    """ImageFolder without hidden entries: ``.ipynb_checkpoints``, ``.DS_Store``, ``._x.png`` are
    neither classes (which would shift the class-to-output mapping) nor images."""

    class VisibleImageFolder(datasets.ImageFolder):
        def find_classes(self, directory: str):
            entries = os.scandir(directory)
            classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
            if not classes:
                raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
            return classes, {name: i for i, name in enumerate(classes)}

        def __init__(self, root: str, transform: Any, loader: Any) -> None:
            def visible_image(path: str) -> bool:
                name = os.path.basename(path)
                return not name.startswith(".") and name.lower().endswith(datasets.folder.IMG_EXTENSIONS)

            super().__init__(root, transform=transform, loader=loader, is_valid_file=visible_image)

    return VisibleImageFolder


class Normalized(nn.Module):
    """``model((x - mean) / std)``: figures and concepts work on ``[0, 1]`` images while the
    model sees its usual normalised input. The wrapped model is ``self.model``, so layer
    names get a ``model.`` prefix (handled by :func:`resolve_layers_cli`)."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def resolve_layers_cli(model: nn.Module, names: Sequence[str], argument: str) -> List[str]:
    """Check every layer name against ``model`` (one clear error for an unknown one); returns the
    names as the (possibly wrapped) model knows them."""
    prefix = "model." if isinstance(model, Normalized) else ""
    inner = model.model if isinstance(model, Normalized) else model
    out = []
    for name in names:
        try:
            resolve_layer(inner, name, argument)
        except ValueError as err:
            raise CLIError(_first_line(err).replace("is not a submodule", "is not a layer")) from None
        out.append(prefix + name)
    return out


def check_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        with torch.no_grad():
            return model(x)
    except Exception as err:
        raise CLIError(
            f"the model cannot run on the images (batch of shape {tuple(x.shape)}): {_first_line(err)}; "
            "check --image-size and --channels"
        ) from None


def pick_device(name: Optional[str]) -> torch.device:
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CLIError(f"--device {name!r} is not a device: {_first_line(err)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name!r} asked for CUDA but no CUDA device is available")
    return device


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
