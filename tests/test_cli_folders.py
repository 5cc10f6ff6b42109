"""Hostile image folders and output folders: links out of a class folder, loops of links, a FIFO
named like an image, an image whose header claims 30000x30000 pixels, corrupt images with and
without --skip-bad-images, folder names that are not UTF-8, an --out holding an earlier report."""

from __future__ import annotations

import os
import signal
import struct
import sys
import textwrap
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from captum_concepts.cli import main
from captum_concepts.cli._loading import load_images

MODELS = textwrap.dedent(
    """
    from torch import nn

    def tiny():
        layers = [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 3)]
        return nn.Sequential(*layers)
    """
)


def _rgb(path: Path, seed: int) -> None:
    from PIL import Image

    arr = (np.random.default_rng(seed).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """images/{a, b, c}/{0, 1}.png and an importable tiny model."""
    (tmp_path / "cli_folder_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("cli_folder_models", None)
    for c, name in enumerate("abc"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(2):
            _rgb(tmp_path / "images" / name / f"{i}.png", 10 * c + i)
    return tmp_path


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (a blocking open() of a FIFO is interrupted by the alarm)."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _load(root: Path, **kwargs):
    with deadline(60):
        return load_images(str(root / "images"), 16, 3, 1000, "none", 0, progress=False, **kwargs)


def _argv(root: Path, out: Path, command: str = "scores", *extra: str) -> list:
    return [
        command, "--model", "cli_folder_models:tiny", "--images", str(root / "images"), "--layers", "1",
        "--image-size", "16", "--out", str(out), "--no-progress", "--benchmark-draws", "1",
        "--n-examples", "2", *extra,
    ]  # fmt: skip


# ---------------------------------------------------------------------- the walk
def test_a_link_to_the_parent_is_not_followed_out_of_the_class_folder(tree):
    os.symlink("..", tree / "images" / "a" / "up")  # a/up/b/0.png would be class b's image under a
    os.symlink("../b", tree / "images" / "a" / "sibling")
    (tree / "elsewhere").mkdir()
    _rgb(tree / "elsewhere" / "0.png", 7)
    os.symlink(tree / "elsewhere", tree / "images" / "outside")  # a class folder out of --images
    os.symlink(".", tree / "images" / "itself")
    data = _load(tree)
    assert data.class_names == ["a", "b", "c"]
    assert sorted(data.labels.tolist()) == [0, 0, 1, 1, 2, 2]  # 6 images, not other classes' again
    skipped = " ".join(data_skipped(tree))
    assert "a/up (a link leading out of its class folder)" in skipped and "a/sibling" in skipped
    assert "images/outside (a link leading out of --images)" in skipped and "images/itself" in skipped


def data_skipped(root: Path):
    from captum_concepts.cli._images import scan_image_folder

    return scan_image_folder(str(root / "images")).skipped


def test_links_inside_a_class_folder_are_followed_once(tree):
    a = tree / "images" / "a"
    (a / "deeper").mkdir()
    _rgb(a / "deeper" / "2.png", 5)
    os.symlink("deeper", a / "alias")  # the same real folder twice: its image once
    os.symlink("0.png", a / "same.png")  # the same real file twice: once
    data = _load(tree)
    assert sorted(data.labels.tolist()) == [0, 0, 0, 1, 1, 2, 2]


def test_loops_of_links_end_quickly(tree):
    a = tree / "images" / "a"
    os.symlink(".", a / "x")  # two links to the folder itself: 2^depth paths for a naive walk
    os.symlink(".", a / "y")
    os.symlink("l2", a / "l1")  # two links to each other: ELOOP
    os.symlink("l1", a / "l2")
    data = _load(tree)
    assert sorted(data.labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_a_fifo_named_like_an_image_is_never_opened(tree):
    os.mkfifo(tree / "images" / "b" / "x.png")  # opening it would block forever
    data = _load(tree)
    assert sorted(data.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert any("b/x.png (not a regular file)" in s for s in data_skipped(tree))


def test_non_utf8_folder_names_load_and_report(tree, tmp_path, capsys):
    bad = os.fsencode(str(tree / "images")) + b"/caf\xe9"  # Latin-1 bytes: not UTF-8
    os.rename(tree / "images" / "c", bad)
    data = _load(tree)
    assert data.class_names == ["a", "b", "caf\ufffd"]
    assert main(_argv(tree, tmp_path / "out")) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "'caf\ufffd' -> output 2" in out
    assert "caf\ufffd" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


def test_an_empty_class_folder_is_named(tree, tmp_path, capsys):
    (tree / "images" / "d_empty").mkdir()
    (tree / "images" / "d_empty" / "notes.txt").write_text("no image here")
    assert main(_argv(tree, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "class folder(s) 'd_empty'" in err and "hold no image" in err


# ---------------------------------------------------------------------- reading
def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims ``width`` x ``height`` with one tiny IDAT chunk (a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_an_image_claiming_30000x30000_pixels_is_an_error_naming_it(tree, tmp_path, capsys):
    huge = tree / "images" / "a" / "huge.png"
    _png_header_only(huge, 30000, 30000)
    assert main(_argv(tree, tmp_path / "out")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(huge) in lines[0] and "its header claims" in lines[0], lines
    assert "900000000 pixels" in lines[0]  # 30000 x 30000, from the header: nothing was decoded


def test_an_image_header_above_the_limit_is_refused_before_decoding(tmp_path):
    from captum_concepts.cli._images import MAX_PIXELS, ImageReadError, read_image

    path = tmp_path / "big.png"
    _png_header_only(path, 9000, 9000)  # 81 M pixels: under PIL's own limit, over ours
    assert 9000 * 9000 > MAX_PIXELS
    with pytest.raises(ImageReadError, match="header claims 9000x9000 pixels"):
        read_image(str(path))


def test_skip_bad_images_lists_what_it_left_out(tree, tmp_path, capsys):
    bad = tree / "images" / "b" / "2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    _png_header_only(tree / "images" / "c" / "huge.png", 30000, 30000)
    assert main(_argv(tree, tmp_path / "out1")) == 2  # off by default: an error naming the file
    assert str(bad) in capsys.readouterr().err
    assert main(_argv(tree, tmp_path / "out2", "scores", "--skip-bad-images")) == 0
    err = capsys.readouterr().err
    assert "left out 2 unreadable image(s)" in err and str(bad) in err and "huge.png" in err
    html = (tmp_path / "out2" / "report.html").read_text()
    assert "Unreadable images left out (--skip-bad-images)" in html and "6 images from" in html


def test_a_class_whose_every_image_is_unreadable_is_named(tree, tmp_path, capsys):
    for i in range(2):
        (tree / "images" / "c" / f"{i}.png").write_bytes(b"garbage")
    assert main(_argv(tree, tmp_path / "out", "scores", "--skip-bad-images")) == 2
    assert "no readable image in class folder(s) 'c'" in capsys.readouterr().err


# ---------------------------------------------------------------------- --out
def test_out_holding_a_report_needs_overwrite_which_removes_its_figures(tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_argv(tree, out)) == 0
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert "noise_score_curve.png" in figures
    (out / "figures" / "old_only.png").write_bytes(b"x")  # a figure only the earlier report shows
    html = (out / "report.html").read_text()
    (out / "report.html").write_text(html.replace("noise_score_curve.png", "old_only.png", 1))
    (out / "notes.txt").write_text("mine")  # not the report's: kept
    capsys.readouterr()
    assert main(_argv(tree, out)) == 2
    err = capsys.readouterr().err
    assert "already holds a report" in err and "--overwrite" in err
    assert (out / "figures" / "old_only.png").exists()  # nothing removed on refusal
    assert main(_argv(tree, out, "scores", "--overwrite")) == 0
    assert not (out / "figures" / "old_only.png").exists()
    assert (out / "notes.txt").read_text() == "mine"
    html = (out / "report.html").read_text()
    from captum_concepts.cli._report import referenced_figures

    assert sorted(Path(src).name for src in referenced_figures(html)) == sorted(
        p.name for p in (out / "figures").iterdir()
    )
