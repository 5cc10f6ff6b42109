"""The command line on channels-last, token and untrained models: --reshape, --upsample, --shift,
the untrained-weights warning and labels, one-line exit-2 errors with the user's layer names."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from captum_concepts.cli import main

MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torchvision.ops.misc import Permute

    class ChannelsLast(nn.Module):  # a ConvNeXt/Swin-like stage: (N, H, W, C) inside
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 6, 4, stride=4)
            self.permute = Permute([0, 2, 3, 1])
            self.norm = nn.LayerNorm(6)
            self.mlp = nn.Linear(6, 6)
            self.act = nn.GELU()
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            h = self.act(self.mlp(self.norm(self.permute(self.stem(x)))))
            return self.head(h.mean(dim=(1, 2)))

    class Tokens(nn.Module):  # a ViT-like model: class token + 4x4 patch tokens
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, 8, 4, stride=4)
            self.cls = nn.Parameter(torch.randn(1, 1, 8))
            self.block = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
            self.last = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1)
            return self.head(self.last(self.block(t))[:, 0])

    def channels_last():
        torch.manual_seed(0)
        return ChannelsLast()

    def tokens():
        torch.manual_seed(0)
        return Tokens()
    """
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("cli_models")
    (root / "cli_layout_models.py").write_text(MODELS)
    sys.path.insert(0, str(root))
    import cli_layout_models

    torch.save(cli_layout_models.channels_last().state_dict(), root / "cl.pt")
    torch.save(cli_layout_models.tokens().state_dict(), root / "tok.pt")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("a", "b", "c")):
        (root / "images" / name).mkdir(parents=True)
        for i in range(3):
            arr = (rng.random((16, 16, 3)) * 80).astype(np.uint8)
            arr[2 + c : 9 + c, 3:12, c] = 255
            Image.fromarray(arr).save(root / "images" / name / f"{i}.png")
    yield root
    sys.path.remove(str(root))
    sys.modules.pop("cli_layout_models", None)


def _args(root: Path, command: str, out: Path, model: str, weights, *extra: str) -> list:
    args = [command, "--model", model, "--images", str(root / "images"), "--image-size", "16"]
    if weights:
        args += ["--weights", str(root / weights)]
    # --overwrite: several tests run twice into one --out
    return args + ["--out", str(out), "--overwrite", "--no-progress", "--benchmark-draws", "1", *extra]


def _figure_headings(out: Path):
    return re.findall(r"<figcaption><h3>([^<]+)</h3>", (out / "report.html").read_text())


def test_scores_on_a_channels_last_layer(setup, tmp_path, capsys):
    argv = _args(
        setup, "scores", tmp_path, "cli_layout_models:channels_last", "cl.pt", "--layers", "stem", "mlp"
    )
    assert main(argv + ["--reshape", "none", "channels-last", "--upsample", "bilinear"]) == 0
    assert "looks channels-last" not in capsys.readouterr().err
    assert all("untrained" not in h for h in _figure_headings(tmp_path))
    assert main(argv) == 0  # without --reshape: a warning naming the user's layer
    err = capsys.readouterr().err
    assert "--layers mlp has output" in err and "--reshape channels-last" in err
    assert "--layers stem" not in err


def test_scores_on_token_layers(setup, tmp_path, capsys):
    argv = _args(setup, "scores", tmp_path, "cli_layout_models:tokens", "tok.pt", "--layers", "block")
    assert main(argv + ["--reshape", "vit", "--upsample", "none"]) == 0
    assert "token-shaped" not in capsys.readouterr().err
    assert main(argv + ["--reshape", "tokens:1"]) == 0
    capsys.readouterr()
    line = _one_line_exit_2(capsys, argv)  # tokens read as (N, C=17, L=8): maps over 1 dim, images 2
    assert "--layers block gives maps over 1 dimension(s) (8,)" in line and "--reshape vit" in line


def test_discover_with_shift_on_a_gelu_layer(setup, tmp_path):
    argv = _args(setup, "discover", tmp_path, "cli_layout_models:channels_last", "cl.pt", "--layers", "act")
    argv.remove("--benchmark-draws")
    argv.remove("1")
    assert main(argv + ["--reshape", "channels-last", "--shift", "min", "--n-concepts", "2"]) == 0
    assert "concept_grid" in (tmp_path / "report.html").read_text()


def test_untrained_model_is_said_on_stderr_in_the_report_and_every_figure(setup, tmp_path, capsys):
    argv = _args(setup, "scores", tmp_path, "cli_layout_models:channels_last", None, "--layers", "stem")
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "no --weights given" in err and "untrained" in err
    html = (tmp_path / "report.html").read_text()
    assert "untrained (random) weights" in html
    headings = _figure_headings(tmp_path)
    assert headings and all("untrained weights" in h for h in headings)
    assert "(trained)" not in html  # the curves' legend and table say "untrained"


def _one_line_exit_2(capsys, argv):
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("captum-concepts: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(lines), lines
    return errors[0]


def test_layer_problems_are_one_line_exit_2_with_the_users_names(setup, tmp_path, capsys):
    # torchvision's BasicBlock calls its relu twice; the CLI wraps torchvision models (normalisation)
    argv = ["scores", "--model", "resnet18", "--images", str(setup / "images"), "--image-size", "16"]
    argv += ["--out", str(tmp_path), "--no-progress", "--layers", "layer1.0.relu"]
    line = _one_line_exit_2(capsys, argv)
    assert "--layers layer1.0.relu runs 2 times" in line and "model." not in line
    argv = _args(setup, "scores", tmp_path, "cli_layout_models:tokens", "tok.pt", "--layers", "block")
    line = _one_line_exit_2(capsys, argv + ["--reshape", "tokens:2"])
    assert "--reshape for --layers block" in line and "square grid" in line
    line = _one_line_exit_2(capsys, argv + ["--reshape", "diagonal"])
    assert "'diagonal' is not a layout" in line
    line = _one_line_exit_2(capsys, argv + ["--reshape", "vit", "vit"])
    assert "one layout for all layers or one per layer" in line
