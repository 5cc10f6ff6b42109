"""The command line's report captions and terminal lines say only what is true of the run: the
embedding components a map aggregates (``--embedding-dims``), "held-out" only for images that were
kept out of a fit, no two-object wording for one-object images, and the normalisation applied."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from captum_concepts.cli import main

MODELS = textwrap.dedent(
    """
    from collections import OrderedDict
    from torch import nn

    def gap_net():
        return nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, padding=1), relu1=nn.ReLU(),
            gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), head=nn.Linear(4, 3),
        ))
    """
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 3-class model (its 4-channel ``gap`` is the embedding) and 3 class folders of 4 images."""
    from PIL import Image

    root = tmp_path_factory.mktemp("captions")
    (root / "cli_captions_models.py").write_text(MODELS)
    sys.path.insert(0, str(root))
    sys.modules.pop("cli_captions_models", None)
    import cli_captions_models

    torch.manual_seed(0)
    torch.save(cli_captions_models.gap_net().state_dict(), root / "gap.pt")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["a", "b", "c"]):
        (root / "images" / name).mkdir(parents=True)
        for i in range(4):
            arr = (rng.random((16, 16, 3)) * 80).astype(np.uint8)
            arr[3 + c : 9 + c, 3:12, c] = 255
            Image.fromarray(arr).save(root / "images" / name / f"{i}.png")
    yield root
    sys.path.remove(str(root))
    sys.modules.pop("cli_captions_models", None)


def _argv(command: str, root: Path, out: Path, *extra: str):
    return [
        command,
        "--model",
        "cli_captions_models:gap_net",
        "--weights",
        str(root / "gap.pt"),
        "--images",
        str(root / "images"),
        "--image-size",
        "16",
        "--layers",
        "relu1",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_scores_captions_name_the_explained_components_and_claim_no_held_out_set(setup, tmp_path, capsys):
    argv = _argv(
        "scores",
        setup,
        tmp_path / "out",
        *("--embedding-layer", "gap", "--embedding-dims", "2", "--n-examples", "4", "--benchmark-draws", "2"),
    )
    assert main(argv) == 0
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    # 2 of the 4 components were explained: the grid's caption must not say all 4
    assert "2 of the 4 embedding components, drawn at random" in html
    assert "over the 4 embedding components" not in html
    # scores fits nothing on the folder: its images are not "held-out"
    assert "held-out" not in html
    # the normalisation is said in the terminal too, with the hint when it was a default
    out = capsys.readouterr().out
    assert "normalisation: none (--normalize auto: a module:factory model)" in out
    assert "pass --mean / --std" in out


def test_saliency_caption_without_boxes_and_help_without_sorted_order(setup, tmp_path, capsys):
    argv = _argv("saliency", setup, tmp_path / "out", "--mean", "0.5", "--std", "0.25")
    assert main(argv) == 0
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    # one object per image, no boxes: the two-object wording of the demo's canvases is wrong here
    assert "the other one" not in html and "boxes, when drawn" not in html and "(its label)" in html
    assert "held-out examples" in html  # saliency does keep a quarter of the images out of the fit
    out = capsys.readouterr().out
    assert "normalisation: (x - mean) / std with mean (0.5, 0.5, 0.5), std (0.25, 0.25, 0.25)" in out
    assert "pass --mean / --std" not in out
    with pytest.raises(SystemExit):
        main(["saliency", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "in sorted order, are taken as the model's output classes" not in help_text
    assert "--classes" in help_text


def test_a_checkpoint_with_another_stem_says_what_to_do(tmp_path):
    """A torchvision architecture saved with a 1-channel stem cannot load into the 3-channel one
    the name builds: the error says so and points to a module:factory, not only the shapes."""
    from torchvision import models

    from captum_concepts.cli._errors import CLIError
    from captum_concepts.cli._loading import load_model, load_weights, read_checkpoint

    tuned = models.resnet18(num_classes=10)
    tuned.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    torch.save({f"module.{k}": v for k, v in tuned.state_dict().items()}, tmp_path / "gray.pt")
    with pytest.raises(CLIError) as err:
        load_weights(load_model("resnet18", num_classes=10), read_checkpoint(str(tmp_path / "gray.pt")))
    message = str(err.value)
    assert "conv1.weight (64, 1, 7, 7) vs (64, 3, 7, 7)" in message
    assert "takes 1 input channel(s), the model built here 3" in message
    assert "module:factory" in message and "--channels 1" in message
    # same stem, another head: no stem hint
    other = models.resnet18(num_classes=4)
    torch.save(other.state_dict(), tmp_path / "head.pt")
    with pytest.raises(CLIError) as err:
        load_weights(load_model("resnet18", num_classes=10), read_checkpoint(str(tmp_path / "head.pt")))
    assert "fc.weight (4, 512) vs (10, 512)" in str(err.value) and "input channel" not in str(err.value)


def test_tcav_at_a_layer_before_a_linear_head_is_flagged():
    """After global average pooling and a linear head, d(logit)/d(layer) = W_c / (H W) for every
    image, so TCAV's sign count is 0 or 1 whatever the images: the check is detected (and only then)."""
    from collections import OrderedDict

    from torch import nn

    from captum_concepts.cli._context import Context
    from captum_concepts.cli._sections_tcav import gradient_is_image_independent

    torch.manual_seed(4)  # a seed whose relu2 is on for some images and off for others (checked below)
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(3, 4, 3, padding=1),
            relu=nn.ReLU(),
            gap=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(4, 5),
            relu2=nn.ReLU(),
            head=nn.Linear(5, 3),
        )
    ).eval()
    images = torch.randn(6, 3, 8, 8) * 3
    with torch.no_grad():
        on = model.fc(model.flatten(model.gap(model.relu(model.conv(images))))) > 0
    assert (on != on[:1]).any()  # relu2's pattern differs between images

    def ctx(layer: str) -> Context:
        return Context(
            model=model,
            report=None,
            fit_images=images,
            fit_labels=torch.zeros(6),
            eval_images=images,
            eval_labels=torch.zeros(6),
            class_names=["a", "b", "c"],
            layers=[layer],
            embedding_layer=None,
            concept_layer=layer,
            random_model=lambda: None,
            device=torch.device("cpu"),
            seed=0,
        )

    # "fc" reaches the output through relu2 (image-dependent); "relu2" only through the linear head;
    # "relu" through gap + flatten + fc + relu2: relu2 makes the gradient image-dependent again
    assert gradient_is_image_independent(ctx("relu2"), images, target=1)
    assert not gradient_is_image_independent(ctx("fc"), images, target=1)
    assert not gradient_is_image_independent(ctx("relu"), images, target=1)
    # plain autograd: at relu2 the gradient of logit 1 is head.weight[1] for every image
    feats = torch.relu(model.fc(model.flatten(model.gap(model.relu(model.conv(images)))))).requires_grad_()
    (grad,) = torch.autograd.grad(model.head(feats)[:, 1].sum(), feats)
    assert torch.allclose(grad, model.head.weight[1].detach().expand_as(grad))
    assert not gradient_is_image_independent(ctx("relu2"), images[:1], target=1)  # one image: no claim
