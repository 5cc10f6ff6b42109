"""The ``captum-concepts`` command line: the demo end to end (quick mode), the report's figures,
the commands on a user's model and ImageFolder, and one-line errors for common mistakes."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from captum_concepts.cli import main
from captum_concepts.cli._report import referenced_figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TINY_MODEL = textwrap.dedent(
    """
    from collections import OrderedDict
    from torch import nn

    def tiny_cnn():
        return nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, padding=1), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(4, 8, 3, padding=1), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(), fc=nn.Linear(8 * 4 * 4, 6), relu3=nn.ReLU(), head=nn.Linear(6, 3),
        ))

    NOT_A_MODEL = 3
    """
)


def _check_report(out: Path) -> str:
    """Every figure the report references exists and is a non-empty PNG; returns the HTML."""
    html = (out / "report.html").read_text()
    figures = referenced_figures(html)
    assert figures, "the report shows no figure"
    for src in figures:
        path = out / src
        assert path.is_file(), f"report references a missing figure {src}"
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), f"{src} is not a non-empty PNG"
    # every figure has a caption with a heading and some text beside it
    captions = re.findall(r"<figcaption><h3>([^<]+)</h3><p>([^<]{40,})</p>", html)
    assert len(captions) == len(figures)
    assert "Traceback" not in html and "Skipped" not in html
    return html


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_demo_runs_every_method_and_writes_report(demo_report):
    html = _check_report(demo_report)
    for section in (
        "Embedding attributions",
        "Representation scores",
        "Semantic vectors",
        "Semantic saliency",
        "Concepts by coupled NMF",
    ):
        assert f"<h2>{section}</h2>" in html
    names = {Path(src).stem for src in referenced_figures(html)}
    assert {
        "embedding_attributions",
        "noise_score_curve",
        "variance_score_curve",
        "relevance_matrix",
        "semantic_saliency",
        "pointing_game_curve",
        "concept_grid",
        "neuron_similarity",
        "tcav_scores",
    } <= names
    assert "test accuracy" in html


@pytest.fixture(scope="module")
def user_setup(tmp_path_factory):
    """A module:factory model on sys.path, matching and mismatching weights, a tiny ImageFolder."""
    from PIL import Image

    root = tmp_path_factory.mktemp("user")
    (root / "tiny_cli_models.py").write_text(TINY_MODEL)
    sys.path.insert(0, str(root))
    import tiny_cli_models

    torch.manual_seed(0)
    torch.save(tiny_cli_models.tiny_cnn().state_dict(), root / "weights.pt")
    bad = tiny_cli_models.tiny_cnn().state_dict()
    bad["fc.weight"] = torch.zeros(5, 128)
    torch.save(bad, root / "bad_weights.pt")
    rng = np.random.default_rng(0)
    images = root / "images"
    for c, name in enumerate(("circle", "square", "stripes")):
        (images / name).mkdir(parents=True)
        for i in range(4):
            arr = (rng.random((16, 16, 3)) * 80).astype(np.uint8)
            arr[4 + c : 10 + c, 3:12, c] = 255
            Image.fromarray(arr).save(images / name / f"{i}.png")
    (root / "empty").mkdir()
    (root / "empty" / "some_class").mkdir()
    yield root
    sys.path.remove(str(root))
    sys.modules.pop("tiny_cli_models", None)


def _user_args(root: Path, command: str, out: Path, *extra: str) -> list:
    return [
        command,
        "--model",
        "tiny_cli_models:tiny_cnn",
        "--weights",
        str(root / "weights.pt"),
        "--images",
        str(root / "images"),
        "--image-size",
        "16",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_scores_on_user_model(user_setup, tmp_path):
    args = _user_args(
        user_setup, "scores", tmp_path, "--layers", "relu1", "relu2", "--embedding-layer", "relu3"
    )
    assert main(args) == 0
    html = _check_report(tmp_path)
    assert "noise_score_curve" in html and "embedding_attributions" in html


def test_saliency_on_user_model(user_setup, tmp_path):
    assert main(_user_args(user_setup, "saliency", tmp_path, "--layers", "pool2")) == 0
    html = _check_report(tmp_path)
    assert "relevance_matrix" in html and "semantic_saliency" in html
    assert "circle" in html  # class names come from the folder


def test_discover_on_user_model(user_setup, tmp_path):
    args = _user_args(user_setup, "discover", tmp_path, "--layers", "relu1", "relu2", "--n-concepts", "3")
    assert main(args) == 0
    html = _check_report(tmp_path)
    assert "concept_grid" in html and "neuron_similarity" in html


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("captum-concepts: error:") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_errors_are_one_clear_line(user_setup, tmp_path, capsys):
    root = user_setup
    base = _user_args(root, "scores", tmp_path, "--layers", "relu1")
    missing = list(base)
    missing[missing.index("--images") + 1] = str(root / "nope")
    _one_line_error(capsys, missing, "does not exist", "nope")
    unknown = _user_args(root, "scores", tmp_path, "--layers", "relu_1")
    _one_line_error(capsys, unknown, "'relu_1'", "relu1")  # suggests the close name
    bad_weights = list(base)
    bad_weights[bad_weights.index("--weights") + 1] = str(root / "bad_weights.pt")
    _one_line_error(capsys, bad_weights, "do not match", "fc.weight")
    no_weights = list(base)
    no_weights[no_weights.index("--weights") + 1] = str(root / "missing.pt")
    _one_line_error(capsys, no_weights, "missing.pt", "does not exist")
    empty = list(base)
    empty[empty.index("--images") + 1] = str(root / "empty")
    _one_line_error(capsys, empty, "class folder(s) 'some_class'", "hold no image")  # names the folder
    not_model = list(base)
    not_model[not_model.index("--model") + 1] = "tiny_cli_models:NOT_A_MODEL"
    _one_line_error(capsys, not_model, "nn.Module")
    no_module = list(base)
    no_module[no_module.index("--model") + 1] = "no_such_module_xyz:f"
    _one_line_error(capsys, no_module, "no_such_module_xyz")
    typo = list(base)
    typo[typo.index("--model") + 1] = "resnet1800"
    _one_line_error(capsys, typo, "unknown model", "resnet18")
    if not torch.cuda.is_available():
        _one_line_error(capsys, base + ["--device", "cuda"], "CUDA")


def test_verbose_shows_the_traceback(user_setup, tmp_path, capsys):
    argv = _user_args(user_setup, "scores", tmp_path, "--layers", "relu_1", "--verbose")
    assert main(argv) == 2
    assert "Traceback" in capsys.readouterr().err


def test_python_dash_m_and_help():
    out = subprocess.run(
        [sys.executable, "-m", "captum_concepts", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("demo", "scores", "saliency", "discover"):
        assert command in out.stdout
    assert main([]) == 2  # no command: the help, non-zero
