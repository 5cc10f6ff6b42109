"""The command line on a user's own model as a new user would run it: class names in output
order that are not the folders' sorted order, the model's own mean/std, checkpoints saved with a
``module.`` prefix inside a dict; the folder-to-output mapping, the accuracy check and its warning,
and argument errors before any image is read."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from captum_concepts.cli import _sections as S
from captum_concepts.cli import main
from captum_concepts.cli._classes import check_accuracy, map_classes, parse_classes
from captum_concepts.cli._errors import CLIError

# Uniform grey images: "apple" dark (0.2), "mango" mid (0.5), "zebra" bright (0.8). The model was
# built for inputs normalised with mean 0.5, std 0.1 (z = -3, 0, 3) and its outputs are, in order,
# zebra, apple, mango: not the folders' sorted order. Without the normalisation every image looks
# "mid" (z in [0.2, 0.8]) and the model answers mango: one third right.
MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn

    CLASSES = ["zebra", "apple", "mango"]

    class Brightness(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Conv2d(3, 3, 1)
            self.relu = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flatten = nn.Flatten()
            self.head = nn.Linear(3, 3)

        def forward(self, x):
            return self.head(self.flatten(self.pool(self.relu(self.features(x)))))

    def untrained():
        torch.manual_seed(1)
        return Brightness()

    def trained():
        model = untrained()
        with torch.no_grad():
            w = torch.zeros(3, 3, 1, 1)
            w[0, :, 0, 0] = 1 / 3   # u = relu(z)
            w[1, :, 0, 0] = -1 / 3  # v = relu(-z)
            model.features.weight.copy_(w)
            model.features.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))  # a unit every class shares
            model.head.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 0]]))
            model.head.bias.copy_(torch.tensor([-1.5, -1.5, 0.0]))
        return model
    """
)
LEVELS = {"apple": 0.2, "mango": 0.5, "zebra": 0.8}
N_PER_CLASS = 4


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("classes")
    (root / "cli_brightness.py").write_text(MODEL)
    sys.path.insert(0, str(root))
    import cli_brightness

    state = cli_brightness.trained().state_dict()
    torch.save(state, root / "plain.pt")
    # as DataParallel + a training loop save it: a module. prefix inside a dict with other entries
    wrapped = {"epoch": 7, "model_state_dict": {f"module.{k}": v for k, v in state.items()}, "lr": 0.1}
    torch.save(wrapped, root / "checkpoint.pt")
    torch.save({"epoch": 7, "optimizer": {"lr": 0.1}}, root / "no_state.pt")
    rng = np.random.default_rng(0)
    for name, level in LEVELS.items():
        folder = root / "images" / name
        folder.mkdir(parents=True)
        for i in range(N_PER_CLASS):
            arr = np.clip(level + rng.uniform(-0.02, 0.02, (8, 8, 3)), 0, 1)
            Image.fromarray((arr * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    (root / "classes.txt").write_text("zebra\napple\n\nmango\n")
    yield root
    sys.path.remove(str(root))
    sys.modules.pop("cli_brightness", None)


def _argv(root: Path, out: Path, *extra: str, command: str = "saliency", weights: str = "checkpoint.pt"):
    return [
        command, "--model", "cli_brightness:untrained", "--weights", str(root / weights),
        "--images", str(root / "images"), "--layers", "relu", "--image-size", "8",
        "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


@pytest.fixture
def seen(monkeypatch):
    """The context the semantic-vector section receives (targets are its labels)."""
    contexts = []
    real = S.semantic_vectors

    def spy(ctx):
        contexts.append(ctx)
        return real(ctx)

    monkeypatch.setattr(S, "semantic_vectors", spy)
    return contexts


def _accuracy_line(text: str) -> float:
    match = re.search(r"accuracy of the model on the (\d+) images under this mapping: ([\d.]+)%", text)
    assert match, text
    assert int(match.group(1)) == 3 * N_PER_CLASS
    return float(match.group(2))


@pytest.mark.parametrize("classes", ["zebra,apple,mango", "classes.txt"])
def test_classes_in_output_order_give_the_right_targets_and_accuracy(user, tmp_path, capsys, seen, classes):
    value = classes if "," in classes else str(user / classes)
    argv = _argv(user, tmp_path, "--classes", value, "--mean", "0.5", "--std", "0.1")
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert _accuracy_line(captured.out) == 100.0
    assert "PROBABLY DO NOT MATCH" not in captured.err
    assert "'apple' -> output 1" in captured.out and "'zebra' -> output 0" in captured.out
    assert "stripped the 'module.' prefix" in captured.out and "'model_state_dict'" in captured.out
    # what the sections get: every label is the output the model gives for that image
    ctx = seen[0]
    assert ctx.class_names == ["zebra", "apple", "mango"]
    for images, labels in ((ctx.fit_images, ctx.fit_labels), (ctx.eval_images, ctx.eval_labels)):
        with torch.no_grad():
            assert torch.equal(ctx.model(images.to(ctx.device)).argmax(1).cpu(), labels)
        for image, label in zip(images, labels):  # and the image's brightness is that class's
            level = LEVELS[ctx.class_names[int(label)]]
            assert abs(float(image.mean()) - level) < 0.03
    html = (tmp_path / "report.html").read_text()
    assert _accuracy_line(html) == 100.0
    assert "mean (0.5, 0.5, 0.5), std (0.1, 0.1, 0.1) (--mean / --std)" in html
    assert "stripped the &#x27;module.&#x27; prefix" in html
    assert "Warning:" not in html


def test_sorted_folder_order_that_is_wrong_warns_loudly(user, tmp_path, capsys, seen):
    assert main(_argv(user, tmp_path, "--mean", "0.5", "--std", "0.1")) == 0
    captured = capsys.readouterr()
    # the mapping is printed: apple, mango, zebra -> 0, 1, 2
    assert "folders in sorted order (no --classes)" in captured.out
    assert "'apple' -> output 0" in captured.out
    assert _accuracy_line(captured.out) == 0.0  # apple is predicted as output 1, never 0
    warning = [line for line in captured.err.splitlines() if "PROBABLY DO NOT MATCH" in line]
    assert len(warning) == 1 and "pass --classes" in warning[0]
    assert "would make it 100.0%" in warning[0]  # the best relabelling is found
    html = (tmp_path / "report.html").read_text()
    assert 'class="note warning">Warning: THE FOLDERS PROBABLY DO NOT MATCH' in html


def test_without_the_models_mean_and_std_the_accuracy_says_so(user, tmp_path, capsys, seen):
    argv = _argv(user, tmp_path, "--classes", "zebra,apple,mango", command="saliency")
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert _accuracy_line(captured.out) == pytest.approx(100 / 3, abs=0.1)  # every image called mango
    assert "below 67%, near chance" in captured.err  # three classes: halfway between chance and 100 %
    html = (tmp_path / "report.html").read_text()
    assert "Normalisation: none (--normalize auto: a module:factory model)" in html


def test_argument_errors_arrive_before_any_image_is_read(user, tmp_path, capsys, monkeypatch):
    from PIL import Image

    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    bad = {
        "--layers": ("relu_1", "'relu_1'"),
        "--weights": (str(user / "no_state.pt"), "top-level keys 'epoch', 'optimizer'"),
        "--classes": ("zebra,apple", "names 2 classes but the model's output has shape (2, 3)"),
        "--mean": ("0.5,0.5", "--mean takes one number or 3"),
        "--std": ("0", "--std must be finite and > 0"),
        "--model": ("resnet1800", "unknown model"),
        "--reshape": ("diagonal", "not a layout"),
    }
    for flag, (value, needle) in bad.items():
        argv = _argv(user, tmp_path, "--classes", "zebra,apple,mango")
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
        assert main(argv) == 2, flag
        err = capsys.readouterr().err
        assert needle in err, (flag, err)
        assert not opened, f"{flag}: an image was read before the error"
    argv = _argv(user, tmp_path, "--mean", "0.5", "--normalize", "none")
    assert main(argv) == 2 and "both set the normalisation" in capsys.readouterr().err
    argv = _argv(user, tmp_path, "--classes", "zebra,apple,pear")  # a folder matches no class
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "folder 'mango' of --images matches none of --classes" in err
    assert "['apple', 'mango', 'zebra']" in err and "['zebra', 'apple', 'pear']" in err
    assert not opened
    assert main(_argv(user, tmp_path, "--classes", "zebra,apple,mango")) == 0
    assert opened  # the same run with correct arguments does read them


def test_stages_are_named_in_order(user, tmp_path, capsys):
    argv = _argv(user, tmp_path, "--classes", "zebra,apple,mango", command="discover")
    argv.remove("--no-progress")
    assert main(argv + ["--n-concepts", "2"]) == 0
    stages = re.findall(r"\[(\d)/(\d)\] (.+)", capsys.readouterr().err)
    assert [s[2] for s in stages] == [
        "loading the model, checking the arguments",
        "reading images",
        "accuracy on the images",
        "coupled NMF concepts and TCAV",
        "report",
    ]
    assert [int(s[0]) for s in stages] == [1, 2, 3, 4, 5] and {s[1] for s in stages} == {"5"}


# ---------------------------------------------------------------------- the mapping and the check
def test_numeric_prefixes_map_by_number_not_by_sorted_order():
    folders = ["0_T-shirt", "10_Extra", "1_Trouser", "2_Pullover"]  # sorted: 10 before 1
    mapping = map_classes(folders, None, width=11)
    assert mapping.outputs == [0, 10, 1, 2]
    assert "numeric prefix" in mapping.how
    assert map_classes(folders, None, width=5).outputs == [0, 1, 2, 3]  # 10 is no output: sorted order
    names = [f"c{i}" for i in range(11)]
    names[:3] = ["T-shirt", "Trouser", "Pullover"]
    names[10] = "Extra"
    assert map_classes(folders, names, width=11).outputs == [0, 10, 1, 2]
    with pytest.raises(CLIError, match="folder '1_Trouser' has number 1 but output 1 of --classes is 'Coat'"):
        map_classes(["1_Trouser"], ["T-shirt", "Coat"], width=2)
    # names match ignoring case, spaces, '_' and '-'
    assert map_classes(["t_shirt", "ANKLE boot"], ["Ankle-boot", "T-shirt"], 2).outputs == [1, 0]


def test_classes_file_and_list_parsing(tmp_path):
    (tmp_path / "names.txt").write_text("b\n a \n\nc\n", encoding="utf-8")
    assert parse_classes(str(tmp_path / "names.txt")) == ["b", "a", "c"]
    assert parse_classes("b, a,c") == ["b", "a", "c"]
    with pytest.raises(CLIError, match="'a' more than once"):
        parse_classes("a,b,a")
    with pytest.raises(CLIError, match="does not exist"):
        parse_classes(str(tmp_path / "missing.txt"))


@pytest.mark.parametrize("scipy", [True, False])
def test_best_relabelling_with_and_without_scipy(monkeypatch, scipy):
    if not scipy:
        monkeypatch.setitem(sys.modules, "scipy.optimize", None)  # import fails: the greedy fallback
    mapping = map_classes(["a", "b", "c"], None, width=4)
    folder = torch.tensor([0] * 5 + [1] * 5 + [2] * 5)
    # the model says a -> 2, b -> 3, c -> 0 (4 of 5 each); the mapping says a -> 0, b -> 1, c -> 2
    predicted = torch.tensor([2, 2, 2, 2, 1, 3, 3, 3, 3, 1, 0, 0, 0, 0, 2])
    acc = check_accuracy(predicted, folder, mapping, n_outputs=4)
    assert acc.accuracy == pytest.approx(2 / 15)  # the last "b" (predicted 1) and "c" (2) images
    assert acc.best_outputs == [2, 3, 0] and acc.best_accuracy == pytest.approx(12 / 15)
    assert acc.near_chance and acc.far_below_best
    right = check_accuracy(torch.tensor([0] * 5 + [1] * 5 + [2] * 4 + [0]), folder, mapping, 4)
    assert right.accuracy == pytest.approx(14 / 15) and not right.suspicious


# ---------------------------------------------------------------------- torchvision checkpoints
@pytest.mark.parametrize(
    "arch, head", [("resnet18", "fc.weight"), ("mobilenet_v3_small", "classifier.3.weight")]
)
def test_a_fine_tuned_torchvision_checkpoint_loads_without_a_factory(tmp_path, arch, head):
    from torchvision import models

    from captum_concepts.cli._loading import head_classes, load_model, load_weights, read_checkpoint

    torch.manual_seed(0)
    tuned = models.get_model(arch, weights=None, num_classes=7)
    # saved from DistributedDataParallel inside a training checkpoint
    state = {f"module.{k}": v for k, v in tuned.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "tuned.pt")
    checkpoint = read_checkpoint(str(tmp_path / "tuned.pt"))
    assert head_classes(checkpoint.state) == (head, 7)
    assert any("module." in note for note in checkpoint.notes)
    model = load_model(arch, num_classes=7)
    load_weights(model, checkpoint)
    for key, value in tuned.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_the_cli_builds_the_checkpoints_head_size(tmp_path, capsys, user):
    from torchvision import models

    torch.manual_seed(0)
    tuned = models.get_model("resnet18", weights=None, num_classes=3)
    torch.save({f"module.{k}": v for k, v in tuned.state_dict().items()}, tmp_path / "tuned.pt")
    argv = [
        "scores",
        "--model",
        "resnet18",
        "--weights",
        str(tmp_path / "tuned.pt"),
        "--images",
        str(user / "images"),
        "--layers",
        "layer_4",
        "--image-size",
        "32",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2  # the weights loaded; the error is the layer's (before any image is read)
    captured = capsys.readouterr()
    assert "resnet18 built with 3 classes, from fc.weight" in captured.out
    assert "'layer_4'" in captured.err and "do not match" not in captured.err
    assert main(argv + ["--num-classes", "5"]) == 2  # an explicit --num-classes wins: a clear mismatch
    assert "fc.weight (3, 512) vs (5, 512)" in capsys.readouterr().err
