"""The command line's images and errors: bit depth, hidden folders, corrupt files, bad --out /
--weights, factories that exit, clean stderr, and the trust model in --help."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from captum_concepts.cli import main
from captum_concepts.cli._loading import load_images

MODELS = textwrap.dedent(
    """
    from torch import nn

    def tiny():
        layers = [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 3)]
        return nn.Sequential(*layers)

    def colourful_failure():
        raise ValueError("\\x1b[31mbroken factory\\x1b[0m")
    """
)


def _rgb(path: Path, seed: int) -> None:
    from PIL import Image

    arr = (np.random.default_rng(seed).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    (tmp_path / "cli_images_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("cli_images_models", None)
    images = tmp_path / "images"
    for c, name in enumerate(("a", "b")):
        (images / name).mkdir(parents=True)
        for i in range(2):
            _rgb(images / name / f"{i}.png", 10 * c + i)
    return tmp_path


def _argv(root: Path, out: Path, *extra: str) -> list:
    return [
        "scores",
        "--model",
        "cli_images_models:tiny",
        "--images",
        str(root / "images"),
        "--layers",
        "1",
        "--image-size",
        "16",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _one_line_error(capsys, argv, *needles, status=2) -> str:
    assert main(argv) == status
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # no library warnings, no traceback
    assert lines[0].startswith("captum-concepts: error:") and "\x1b" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------- images
@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_png_is_scaled_by_its_bit_depth(tmp_path, channels):
    from PIL import Image

    (tmp_path / "g").mkdir()
    values = (np.arange(16 * 16).reshape(16, 16) * 200).astype(np.uint16)  # up to 51,000 of 65,535
    Image.fromarray(values).save(tmp_path / "g" / "x.png")
    assert Image.open(tmp_path / "g" / "x.png").mode.startswith("I")
    data = load_images(str(tmp_path), 16, channels, 10, "none", 0, progress=False)
    img = data.images[0]
    assert img.shape == (channels, 16, 16)
    expected = torch.from_numpy(values.astype(np.float32) / 65535.0)
    for c in range(channels):
        torch.testing.assert_close(img[c], expected, atol=1e-6, rtol=0)
    assert float(img.max()) < 0.8 and float(img.min()) == 0.0


def test_hidden_entries_are_neither_classes_nor_images(setup):
    images = setup / "images"
    (images / ".ipynb_checkpoints").mkdir()
    _rgb(images / ".ipynb_checkpoints" / "0.png", 99)
    _rgb(images / "a" / "._0.png", 98)  # macOS resource-fork file
    data = load_images(str(images), 16, 3, 100, "none", 0, progress=False)
    assert data.class_names == ["a", "b"]
    assert sorted(data.labels.tolist()) == [0, 0, 1, 1]


# ---------------------------------------------------------------------- errors
def test_corrupt_image_is_one_line_naming_the_path_without_library_warnings(setup, tmp_path, capsys):
    from PIL import Image

    # a palette image with transparency: PIL warns when it is converted to RGB
    pal = Image.new("P", (16, 16))
    pal.putpalette([0, 0, 0, 255, 255, 255] * 128)
    pal.info["transparency"] = b"\x00\x01"
    pal.save(setup / "images" / "a" / "2.png", transparency=b"\x00\x01")
    bad = setup / "images" / "b" / "2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = _one_line_error(capsys, _argv(setup, tmp_path / "out"), "cannot read image")
    assert str(bad) in line
    assert not [w for w in caught if "Palette images" in str(w.message)], "a library warning got through"


def test_out_must_be_a_writable_folder(setup, tmp_path, capsys):
    afile = tmp_path / "report.html"
    afile.write_text("x")
    _one_line_error(capsys, _argv(setup, afile), str(afile), "is a file, not a folder")
    under_file = afile / "sub"
    _one_line_error(capsys, _argv(setup, under_file), str(under_file), "not a writable folder")
    unwritable = Path("/proc/captum_concepts_out")  # not creatable, even by root
    _one_line_error(capsys, _argv(setup, unwritable), str(unwritable), "not a writable folder")


def test_weights_pointing_at_a_folder(setup, tmp_path, capsys):
    folder = tmp_path / "weights_dir"
    folder.mkdir()
    argv = _argv(setup, tmp_path / "out", "--weights", str(folder))
    _one_line_error(capsys, argv, str(folder), "is a folder")


def test_ansi_codes_are_stripped(setup, tmp_path, capsys):
    argv = _argv(setup, tmp_path / "out")
    argv[argv.index("--model") + 1] = "cli_images_models:colourful_failure"
    _one_line_error(capsys, argv, "broken factory", "colourful_failure")


@pytest.mark.parametrize("factory", ["builtins:exit", "builtins:quit", "sys:exit"])
def test_a_factory_that_exits_is_an_error_not_a_success(setup, tmp_path, capsys, factory):
    argv = _argv(setup, tmp_path / "out")
    argv[argv.index("--model") + 1] = factory
    _one_line_error(capsys, argv, factory, "exited the program")
    assert not (tmp_path / "out" / "report.html").exists()


def test_help_states_the_trust_model():
    out = subprocess.run(
        [sys.executable, "-m", "captum_concepts", "scores", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    text = " ".join(out.stdout.split())
    assert "IMPORTS THAT MODULE AND RUNS ITS CODE" in text
    assert "weights_only=True" in text and "no code from the file runs" in text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "imports that module and runs its code" in readme
