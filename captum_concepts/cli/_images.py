"""Find and read the images of an ImageFolder tree (``DIR/<class>/<image>``) safely.

The walk never leaves a class folder (a link out of it, such as ``a/up -> ..``, is skipped and
listed), enters each real folder and takes each real file once (a loop of links ends), and takes
regular files only (a FIFO named ``x.png`` is never opened). Reading checks the size an image's
header claims before decoding it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import torch

from ._errors import CLIError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MAX_PIXELS = 1 << 26  # 67 M pixels (8192 x 8192): larger headers are refused before decoding
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def display_name(name: str) -> str:
    """``name`` as printable text: bytes that are not UTF-8 (kept by the OS as surrogate escapes)
    become U+FFFD, so printing, the report and figure labels never fail on them."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass
class ClassFolder:
    name: str  # the folder's name on disk (may hold surrogate escapes)
    label: str  # printable name (see display_name)
    files: List[str]  # image paths, sorted


@dataclass
class FolderScan:
    root: str
    classes: List[ClassFolder]
    skipped: List[str] = field(default_factory=list)  # "path (reason)" of entries left out


def _inside(real: str, base: str) -> bool:
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _visible(entry: os.DirEntry) -> bool:
    # .ipynb_checkpoints, .DS_Store, ._x.png: neither classes (which would shift the class-to-output
    # mapping) nor images
    return not entry.name.startswith(".")


def _sorted_entries(path: str, skipped: List[str]) -> List[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return sorted((e for e in it if _visible(e)), key=lambda e: e.name)
    except OSError as err:
        skipped.append(f"{display_name(path)} (cannot list it: {err.strerror or first_line(err)})")
        return []


def scan_image_folder(folder: str) -> FolderScan:
    """The class folders of ``folder`` (its visible sub-folders, sorted by name) and their image
    files; nothing is opened. Raises :class:`CLIError` when ``folder`` is missing, has no class
    folder, or a class folder holds no image (naming it)."""
    root = Path(folder)
    if not root.exists():
        raise CLIError(f"image folder {folder!r} does not exist")
    if not root.is_dir():
        raise CLIError(f"--images {folder!r} is not a folder")
    root_real = os.path.realpath(folder)
    skipped: List[str] = []
    classes: List[ClassFolder] = []
    seen_classes = {}
    for entry in _sorted_entries(folder, skipped):
        try:
            is_dir = stat.S_ISDIR(os.stat(entry.path).st_mode)
        except OSError as err:  # a broken link or a loop of links
            skipped.append(f"{display_name(entry.path)} ({err.strerror or 'unreadable'})")
            continue
        if not is_dir:
            continue  # files beside the class folders are not images of any class
        real = os.path.realpath(entry.path)
        if not _inside(real, root_real) or real == root_real:
            skipped.append(f"{display_name(entry.path)} (a link leading out of --images)")
            continue
        if real in seen_classes:
            raise CLIError(
                f"class folders {seen_classes[real]!r} and {display_name(entry.name)!r} in --images are the "
                "same folder (a link): each class needs its own folder"
            )
        seen_classes[real] = display_name(entry.name)
        files = _class_files(entry.path, real, skipped)
        classes.append(ClassFolder(entry.name, display_name(entry.name), files))
    if not classes:
        raise CLIError(
            f"no images found in {folder!r}: expected one sub-folder per class with image files inside "
            f"(ImageFolder layout: {folder}/<class>/<image>.png)"
        )
    empty = [c.label for c in classes if not c.files]
    if empty:
        raise CLIError(
            f"class folder(s) {', '.join(repr(e) for e in empty)} in --images {folder!r} hold no image file "
            f"({', '.join(IMAGE_EXTENSIONS)}); remove them or add images"
        )
    return FolderScan(folder, classes, skipped)


def _class_files(path: str, class_real: str, skipped: List[str]) -> List[str]:
    """Image files under one class folder: each real folder entered once and only inside
    ``class_real``, each real file taken once, regular files only."""
    seen_dirs = {class_real}
    seen_files = set()
    files: List[str] = []
    stack = [(path, class_real)]
    while stack:
        folder, folder_real = stack.pop()
        for entry in _sorted_entries(folder, skipped):
            try:
                mode = entry.stat().st_mode  # follows links; a loop of links raises ELOOP
            except OSError as err:
                skipped.append(f"{display_name(entry.path)} ({err.strerror or 'unreadable'})")
                continue
            image_name = entry.name.lower().endswith(IMAGE_EXTENSIONS)
            if not (stat.S_ISDIR(mode) or image_name):
                continue
            # only links need resolving: the real path of anything else is its folder's plus its name
            is_link = entry.is_symlink()
            real = os.path.realpath(entry.path) if is_link else os.path.join(folder_real, entry.name)
            if not _inside(real, class_real):
                skipped.append(f"{display_name(entry.path)} (a link leading out of its class folder)")
            elif stat.S_ISDIR(mode):
                if real not in seen_dirs:
                    seen_dirs.add(real)
                    stack.append((entry.path, real))
            elif not stat.S_ISREG(mode):
                skipped.append(f"{display_name(entry.path)} (not a regular file)")
            elif real not in seen_files:
                seen_files.add(real)
                files.append(entry.path)
    return sorted(files)


def round_robin(scan: FolderScan, seed: int) -> List[Tuple[str, int]]:
    """Every ``(path, folder index)`` in an order that cycles over the classes (each class's
    files shuffled with ``seed``): the first ``m`` see every class when ``m`` allows."""
    gen = torch.Generator().manual_seed(seed)
    per_class = [[c.files[int(i)] for i in torch.randperm(len(c.files), generator=gen)] for c in scan.classes]
    order: List[Tuple[str, int]] = []
    for depth in range(max(len(f) for f in per_class)):
        order += [(files[depth], k) for k, files in enumerate(per_class) if depth < len(files)]
    return order


def read_images(
    scan: FolderScan,
    transform: Callable[[Any], torch.Tensor],
    max_images: int,
    seed: int,
    skip_bad: bool = False,
    progress: bool = True,
    reader: Optional[Callable[[str], Any]] = None,
) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """At most ``max_images`` images drawn evenly over the classes: ``(images (N, C, H, W),
    folder indices (N,), skipped)``. An unreadable image is a :class:`CLIError` naming it, or,
    with ``skip_bad``, is listed in ``skipped`` and replaced by the next image of the draw."""
    from .._utils.progress import progress_bar

    read = reader or read_image
    images, labels, skipped = [], [], []
    failed = [0] * len(scan.classes)
    bar = progress_bar(
        total=min(max_images, sum(len(c.files) for c in scan.classes)), show=progress, desc="reading images"
    )
    for path, k in round_robin(scan, seed):
        if len(images) == max_images:
            break
        try:
            images.append(transform(read(path)))
        except CLIError as err:
            if not skip_bad:
                raise CLIError(f"{err} (pass --skip-bad-images to leave unreadable images out)") from None
            skipped.append(f"{display_name(path)} ({getattr(err, 'reason', err)})")
            failed[k] += 1
            continue
        labels.append(k)
        bar.update()
    bar.close()
    unread = [c.label for k, c in enumerate(scan.classes) if failed[k] == len(c.files)]
    if unread:
        raise CLIError(
            f"no readable image in class folder(s) {', '.join(map(repr, unread))} of --images "
            f"{scan.root!r} (skipped: {'; '.join(skipped[:3])})"
        )
    return torch.stack(images), torch.tensor(labels), skipped


class ImageReadError(CLIError):
    """An image that cannot be read; ``reason`` says why without the path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read image {display_name(path)!r}: {reason}")
        self.reason = reason


def read_image(path: str) -> Any:
    """A PIL image in ``[0, 1]`` whatever its bit depth: 16-bit greyscale becomes a float image
    (mode ``"F"``) scaled by ``1 / 65535``; every other mode is converted to RGB as usual.
    An unreadable file, or one whose header claims more than :data:`MAX_PIXELS` pixels (checked
    before decoding), is a :class:`CLIError` naming the file."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ImageReadError(
                    path,
                    f"its header claims {width}x{height} pixels, more than the {MAX_PIXELS:,} read at most; "
                    "resize it",
                )
            img.load()
            if img.mode in _SIXTEEN_BIT:
                values = np.asarray(img, dtype=np.float32) / 65535.0
                return Image.fromarray(values.clip(0.0, 1.0))  # float32: mode "F"
            if img.mode == "F":
                return img.copy()
            return img.convert("RGB")
    except CLIError:
        raise
    except Image.DecompressionBombError as err:  # PIL refuses it in open(), from the header
        raise ImageReadError(
            path, f"its header claims more pixels than the {MAX_PIXELS:,} read at most ({first_line(err)})"
        ) from None
    except (OSError, ValueError, SyntaxError, MemoryError) as err:
        # PIL: unidentified, truncated, broken or oversized files
        raise ImageReadError(path, first_line(err)) from None
