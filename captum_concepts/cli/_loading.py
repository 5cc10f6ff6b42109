"""Load a user's model, weights, images and layers for ``discover`` / ``scores`` / ``saliency``.

torchvision is imported here, lazily, only when an image folder or a torchvision
architecture is asked for: ``import captum_concepts`` never imports it.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .._utils.layers import resolve_layer
from .._utils.validation import InvalidParameterError, check_int
from ._errors import CLIError
from ._errors import first_line as _first_line
from ._images import FolderScan, read_image, read_images, scan_image_folder


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
    skipped: List[str] = field(default_factory=list)  # unreadable images left out (--skip-bad-images)


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


REPORT_NAME = "report.html"


def check_output_folder(folder: str, overwrite: bool = False) -> None:
    """``--out`` must be a folder this process can create and write into, and must not hold an
    earlier report unless ``overwrite`` (checked before any work)."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise CLIError(f"--out {folder!r} is a file, not a folder")
    if (path / REPORT_NAME).exists() and not overwrite:
        raise CLIError(
            f"--out {folder!r} already holds a report ({REPORT_NAME}); pass --overwrite to replace it "
            "(its figures are removed with it) or choose another --out"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or _first_line(err)
        raise CLIError(f"--out {folder!r} is not a writable folder: {reason}") from None


def remove_previous_report(folder: str) -> List[str]:
    """Remove ``folder/report.html`` and the figures it shows (only files under ``folder/figures``):
    the files of the earlier report that a new one replaces. Returns the removed paths."""
    from ._report import referenced_figures

    path = Path(folder)
    report = path / REPORT_NAME
    if not report.is_file():
        return []
    figures = (path / "figures").resolve()
    removed = []
    for src in referenced_figures(report.read_text(encoding="utf-8", errors="replace")):
        target = (path / src).resolve()
        if target.parent == figures and target.is_file():
            target.unlink()
            removed.append(str(target))
    report.unlink()
    removed.append(str(report))
    if figures.is_dir() and not any(figures.iterdir()):
        shutil.rmtree(figures)
    return removed


# ---------------------------------------------------------------------- weights
_WRAPPERS = ("state_dict", "model_state_dict", "model", "net")
_HEAD = re.compile(r"^(fc|head|heads\.head|classifier)(\.(\d+))?\.weight$")


@dataclass
class Checkpoint:
    path: str
    state: Dict[str, torch.Tensor]
    notes: List[str] = field(default_factory=list)  # what was done to read it (unwrapped, prefix)


def read_checkpoint(path: Optional[str]) -> Optional[Checkpoint]:
    """A state dict saved with ``torch.save``, read with ``weights_only=True`` (no code runs).
    A dict holding it under ``state_dict`` / ``model_state_dict`` / ``model`` / ``net`` is
    unwrapped and a ``module.`` prefix (DataParallel / DDP) stripped; both are noted."""
    if path is None:
        return None
    if os.path.isdir(path):
        raise CLIError(f"--weights {path!r} is a folder; pass the state-dict file saved with torch.save")
    if not os.path.isfile(path):
        raise CLIError(f"weights file {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors: the message is long, keep its first line
        text = _first_line(err)
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            text = (
                "it holds pickled objects (a whole model?), which are not read since loading them runs "
                "code; save model.state_dict() instead"
            )
        raise CLIError(f"cannot read weights file {path!r}: {text}") from None
    notes = []
    for _ in range(3):  # {"model": {"state_dict": {...}}} too
        if not isinstance(state, dict) or _is_state_dict(state):
            break
        key = next((k for k in _WRAPPERS if isinstance(state.get(k), dict)), None)
        if key is None:
            break
        state = state[key]
        notes.append(f"read the state dict under the key {key!r}")
    if not isinstance(state, dict) or not _is_state_dict(state):
        if isinstance(state, dict):
            keys = ", ".join(repr(k) for k in list(state)[:12]) + (", ..." if len(state) > 12 else "")
            found = f"a dict with the top-level keys {keys}"
        else:
            found = type(state).__name__
        raise CLIError(
            f"weights file {path!r} must hold a state dict (parameter name -> tensor), or a dict holding "
            f"one under {', '.join(map(repr, _WRAPPERS))}; found {found}"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
        notes.append("stripped the 'module.' prefix of DataParallel / DistributedDataParallel")
    return Checkpoint(path, state, notes)


def _is_state_dict(value: Dict[Any, Any]) -> bool:
    return bool(value) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def head_classes(state: Dict[str, torch.Tensor]) -> Optional[Tuple[str, int]]:
    """``(key, number of classes)`` of a torchvision classification head in ``state``
    (``fc.weight``, ``classifier[.i].weight`` with the largest ``i``, ``heads.head.weight``,
    ``head.weight``), or None."""
    found = []
    for key, value in state.items():
        match = _HEAD.match(key)
        if match and value.dim() >= 2:
            found.append((int(match.group(3) or -1), key, int(value.shape[0])))
    if not found:
        return None
    _, key, n = max(found)
    return key, n


def _stem_hint(own: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor]) -> str:
    """When the first convolution's input channels differ (a 1-channel stem on a torchvision
    architecture, say), what to do about it; else ``""``."""
    first = next((k for k, v in own.items() if v.dim() >= 3), None)
    if first is None or first not in state or state[first].dim() != own[first].dim():
        return ""
    theirs, ours = int(state[first].shape[1]), int(own[first].shape[1])
    if theirs == ours:
        return ""
    return (
        f". The checkpoint's first layer {first} takes {theirs} input channel(s), the model built here "
        f"{ours}: a model with a changed stem needs a module:factory that builds it "
        f"(with --channels {theirs})"
    )


def load_weights(model: nn.Module, checkpoint: Optional[Checkpoint]) -> None:
    """Load ``checkpoint`` into ``model``; a mismatch names the missing, unexpected and
    wrong-shaped entries."""
    if checkpoint is None:
        return
    state, path = checkpoint.state, checkpoint.path
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
        raise CLIError(
            f"weights in {path!r} do not match the model: " + ", ".join(parts) + _stem_hint(own, state)
        )
    model.load_state_dict(state)


# ---------------------------------------------------------------------- normalisation
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_stats(
    values: Optional[List[str]], flag: str, channels: int, positive: bool
) -> Optional[torch.Tensor]:
    """``--mean`` / ``--std``: one number for every channel or one per channel (spaces or commas)."""
    if values is None:
        return None
    parts = [p for v in values for p in v.replace(",", " ").split()]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise CLIError(f"{flag} takes numbers (one, or one per channel), got {' '.join(values)!r}") from None
    if len(numbers) not in (1, channels):
        raise CLIError(
            f"{flag} takes one number or {channels} (one per channel, --channels {channels}), "
            f"got {len(numbers)}"
        )
    if not all(math.isfinite(x) for x in numbers) or (positive and min(numbers) <= 0):
        raise CLIError(f"{flag} must be finite{' and > 0' if positive else ''}, got {numbers}")
    return torch.tensor(numbers * channels if len(numbers) == 1 else numbers, dtype=torch.float32)


@dataclass
class Normalisation:
    mean: Optional[torch.Tensor]  # (C,), None: no normalisation
    std: Optional[torch.Tensor]
    source: str  # where it comes from, for the report

    def describe(self) -> str:
        if self.mean is None:
            return f"none ({self.source}): the model gets images in [0, 1]"
        return f"(x - mean) / std with mean {_numbers(self.mean)}, std {_numbers(self.std)} ({self.source})"


def _numbers(values: torch.Tensor) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def choose_normalisation(args: Any, is_factory: bool) -> Normalisation:
    """``--normalize`` / ``--mean`` / ``--std`` -> the normalisation applied inside the model."""
    mean = parse_stats(args.mean, "--mean", args.channels, positive=False)
    std = parse_stats(args.std, "--std", args.channels, positive=True)
    if mean is not None or std is not None:
        if args.normalize not in (None, "auto"):
            raise CLIError(
                f"--normalize {args.normalize} and --mean / --std both set the normalisation; give one"
            )
        mean = torch.zeros(args.channels) if mean is None else mean
        std = torch.ones(args.channels) if std is None else std
        return Normalisation(mean, std, "--mean / --std")
    choice = args.normalize or "auto"
    if choice == "auto":
        choice = "none" if is_factory else "imagenet"
        why = "--normalize auto: " + (
            "a module:factory model" if is_factory else "a torchvision architecture"
        )
    else:
        why = f"--normalize {choice}"
    if choice == "none":
        return Normalisation(None, None, why)
    if args.channels == 3:
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    else:
        mean, std = torch.tensor([0.449]), torch.tensor([0.226])
    return Normalisation(mean, std, f"ImageNet statistics, {why}")


# ---------------------------------------------------------------------- images
def image_transform(image_size: int, channels: int) -> Any:
    """PIL image -> ``(channels, image_size, image_size)`` tensor in ``[0, 1]`` (resize, center crop)."""
    try:
        from torchvision import transforms
    except ImportError:
        raise CLIError("reading an image folder needs torchvision: pip install torchvision") from None
    steps: List[Any] = [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    if channels == 1:
        steps.append(_Grayscale())
    steps += [transforms.ToTensor(), _Channels(channels)]
    return transforms.Compose(steps)


def load_images(
    folder: str,
    image_size: int,
    channels: int,
    max_images: int,
    normalize: str,
    seed: int,
    progress: bool = True,
    skip_bad: bool = False,
    scan: Optional[FolderScan] = None,
) -> ImageData:
    """Read an ImageFolder tree (``folder/<class>/<image>``), resized and center-cropped to
    ``image_size``, at most ``max_images`` of them drawn evenly over the classes. ``labels`` are
    folder indices (sorted folder names); ``class_names`` the folders' printable names."""
    scan = scan if scan is not None else scan_image_folder(folder)
    transform = image_transform(image_size, channels)
    images, labels, skipped = read_images(scan, transform, max_images, seed, skip_bad, progress, read_image)
    mean = std = None
    if normalize == "imagenet":
        mean = torch.tensor(list(IMAGENET_MEAN) if channels == 3 else [0.449])
        std = torch.tensor(list(IMAGENET_STD) if channels == 3 else [0.226])
    return ImageData(images, labels, [c.label for c in scan.classes], mean, std, skipped)


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
