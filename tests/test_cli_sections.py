"""The command line's report sections: TCAV in ``discover`` as a held-out, repeated and tested check,
score curves a user can read (one-position layers), class names that matplotlib or UTF-8 cannot take
as they are, and progress for the long stages."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from captum_concepts.cli import _sections_concepts, _sections_scores, _sections_tcav, main
from captum_concepts.cli._context import Context
from captum_concepts.cli._report import Report
from captum_concepts.cli._sections_labels import plot_label, text_label
from captum_concepts.cli._sections_tcav import (
    MIN_HELD_OUT,
    MIN_IMAGES_PER_CLASS,
    held_out_split,
    t_test_p_value,
)

MODELS = textwrap.dedent(
    """
    from collections import OrderedDict
    from torch import nn

    def four_classes():
        return nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, padding=1), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(4, 8, 3, padding=1), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(), fc=nn.Linear(8 * 4 * 4, 6), relu3=nn.ReLU(), head=nn.Linear(6, 4),
        ))

    def global_pool():
        return nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, padding=1), relu1=nn.ReLU(),
            gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), head=nn.Linear(4, 3),
        ))
    """
)
DOLLARS = ("cost_$5", "cost_$10")  # two "$" in one label: matplotlib reads "$5 ... cost_$" as mathtext
NOT_UTF8 = b"caf\xe9"  # a Latin-1 folder name: Python lists it as "caf\udce9"


def _folder(root: Path, classes, per_class, seed: int = 0) -> Path:
    """An ImageFolder of 16x16 RGB images: class ``c`` has a bright bar in channel ``c % 3``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = root / "images"
    for c, (name, n) in enumerate(zip(classes, per_class)):
        folder = os.path.join(os.fsencode(images), name if isinstance(name, bytes) else name.encode())
        os.makedirs(folder)
        for i in range(n):
            arr = (rng.random((16, 16, 3)) * 80).astype(np.uint8)
            arr[3 + c : 9 + c, 3:12, c % 3] = 255
            Image.fromarray(arr).save(os.path.join(folder, b"%d.png" % i))
    return images


def _can_name_non_utf8(tmp: Path) -> bool:
    try:
        os.mkdir(os.path.join(os.fsencode(tmp), NOT_UTF8))
    except (OSError, UnicodeError):
        return False
    os.rmdir(os.path.join(os.fsencode(tmp), NOT_UTF8))
    return True


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    (root / "cli_sections_models.py").write_text(MODELS)
    sys.path.insert(0, str(root))
    sys.modules.pop("cli_sections_models", None)
    import cli_sections_models

    torch.manual_seed(0)
    torch.save(cli_sections_models.four_classes().state_dict(), root / "four.pt")
    torch.save(cli_sections_models.global_pool().state_dict(), root / "gap.pt")
    yield root
    sys.path.remove(str(root))
    sys.modules.pop("cli_sections_models", None)


class _Recorder:
    """What a run passed to TCAV, to coupled NMF, to the progress bars and to the report's figures."""

    def __init__(self, monkeypatch) -> None:
        from captum.concept import TCAV

        from captum_concepts.concept import CoupledNMFConcepts

        self.tcav_calls, self.fitted, self.bars, self.figures = [], [], [], {}
        interpret, fit, add_figure = TCAV.interpret, CoupledNMFConcepts.fit, Report.add_figure

        def record_interpret(tcav, inputs, experimental_sets, *args, **kwargs):
            self.tcav_calls.append(
                (inputs.detach().cpu().clone(), [[c.id for c in s] for s in experimental_sets])
            )
            return interpret(tcav, inputs, experimental_sets, *args, **kwargs)

        def record_fit(cnmf, inputs, *args, **kwargs):
            self.fitted.append(inputs.detach().cpu().clone())
            return fit(cnmf, inputs, *args, **kwargs)

        def record_figure(report, fig, name, *args, **kwargs):
            ax = fig.axes[0]
            self.figures[name] = {
                "ticks": [t.get_text() for t in ax.get_xticklabels()],
                "rotation": [t.get_rotation() for t in ax.get_xticklabels()],
                "lines": [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()],
                "hatched": [p.get_hatch() for p in ax.patches],
            }
            return add_figure(report, fig, name, *args, **kwargs)

        def bar(module):
            original = module.progress_bar

            def record_bar(*args, **kwargs):
                self.bars.append((kwargs.get("desc"), kwargs.get("show")))
                return original(*args, **kwargs)

            return record_bar

        monkeypatch.setattr(TCAV, "interpret", record_interpret)
        monkeypatch.setattr(CoupledNMFConcepts, "fit", record_fit)
        monkeypatch.setattr(Report, "add_figure", record_figure)
        for module in (_sections_concepts, _sections_tcav, _sections_scores):
            monkeypatch.setattr(module, "progress_bar", bar(module))


@pytest.fixture(scope="module")
def discover_run(models, tmp_path_factory):
    """One ``discover`` run (progress on) on 3 classes of 12 images named with "$" and a non-UTF-8
    byte, plus a class of 4 images (below the TCAV minimum)."""
    root = tmp_path_factory.mktemp("discover")
    odd = NOT_UTF8 if _can_name_non_utf8(root) else "cafe"
    images = _folder(root, [DOLLARS[0], DOLLARS[1], odd, "tiny"], [12, 12, 12, 4])
    out = root / "out"
    argv = [
        "discover",
        "--model",
        "cli_sections_models:four_classes",
        "--weights",
        str(models / "four.pt"),
        "--images",
        str(images),
        "--image-size",
        "16",
        "--layers",
        "relu1",
        "relu2",
        "--n-concepts",
        "3",
        "--out",
        str(out),
    ]
    with pytest.MonkeyPatch.context() as mp:
        recorder = _Recorder(mp)
        status = main(argv)
    html = (out / "report.html").read_text(encoding="utf-8") if status == 0 else ""
    return status, html, recorder, odd


def _rows(a: torch.Tensor):
    return {bytes(x.numpy().tobytes()) for x in a}


# ---------------------------------------------------------------------- TCAV
def test_discover_tcav_scores_only_held_out_images(discover_run):
    status, _, rec, _ = discover_run
    assert status == 0
    assert len(rec.fitted) == 1 and rec.tcav_calls
    fitted = _rows(rec.fitted[0])
    for inputs, _ in rec.tcav_calls:
        assert len(inputs) >= MIN_HELD_OUT
        assert not (_rows(inputs) & fitted), "TCAV scored images that coupled NMF was fitted on"
    # 12 images per tested class: 5 held out each (a third, at least MIN_HELD_OUT); the small class
    # (4 images) and the held-out ones are not fitted on
    assert len(rec.fitted[0]) == 3 * (12 - 5) + 4


def test_discover_tcav_repeats_over_random_sets_and_tests(discover_run):
    status, html, rec, _ = discover_run
    assert status == 0
    r_sets = 10
    for _, sets in rec.tcav_calls:
        # R null sets [random_0, random_r], then R sets [concept, random_r] per tested concept
        null = sets[:r_sets]
        assert null == [[0, r] for r in range(1, r_sets + 1)]
        rest = sets[r_sets:]
        assert rest and len(rest) % r_sets == 0
        for i in range(0, len(rest), r_sets):
            block = rest[i : i + r_sets]
            assert len({s[0] for s in block}) == 1 and block[0][0] > r_sets  # one concept ...
            assert [s[1] for s in block] == list(range(1, r_sets + 1))  # ... vs every random set
    assert "held-out" in html and f"{r_sets} random sets" in html
    assert "two-sided Student t-test" in html and "Bonferroni" in html and "alpha 0.05" in html
    assert "<td>not significant</td>" in html or "<td>significant</td>" in html
    # the class below the minimum is left out, by name, with the stated minimum
    assert f"at least {MIN_IMAGES_PER_CLASS} images per class" in html and "tiny (0 held out)" in html


def test_discover_tcav_figure_marks_and_readable_labels(discover_run):
    status, html, rec, _ = discover_run
    assert status == 0
    fig = rec.figures["tcav_scores"]
    assert fig["ticks"] and all(abs(r) >= 20 for r in fig["rotation"])  # rotated, not one overlapping line
    assert all("\n" in t for t in fig["ticks"])  # "c0: top\nvs control": wrapped onto two lines
    n_ns = html.count("<td>not significant</td>")
    assert sum(h == "///" for h in fig["hatched"]) == n_ns  # every non-significant bar is hatched


def test_discover_report_written_with_dollar_and_non_utf8_class_names(discover_run):
    """Fails before the fix: matplotlib raised on "$5 ... cost_$" (mathtext) or on the surrogate."""
    status, html, rec, odd = discover_run
    assert status == 0
    assert "cost_$5" in html and "cost_$10" in html
    if isinstance(odd, bytes):
        assert "caf\ufffd" in html  # the undecodable byte shown as U+FFFD (docs/cli.md, display_name)
    grid = rec.figures["concept_grid"]
    assert grid is not None


def test_discover_shows_progress_for_its_long_stages(discover_run):
    _, _, rec, _ = discover_run
    shown = {desc for desc, show in rec.bars if show}
    assert {"coupled NMF", "TCAV (per class)"} <= shown


def test_saliency_report_written_with_odd_class_names(models, tmp_path):
    odd = NOT_UTF8 if _can_name_non_utf8(tmp_path) else "caf\u00e9"
    images = _folder(tmp_path, [DOLLARS[0], DOLLARS[1], odd], [3, 3, 3])
    argv = [
        "saliency",
        "--model",
        "cli_sections_models:global_pool",
        "--weights",
        str(models / "gap.pt"),
        "--images",
        str(images),
        "--image-size",
        "16",
        "--layers",
        "relu1",
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert main(argv) == 0
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "cost_$5" in html


# ---------------------------------------------------------------------- score curves
def test_scores_one_position_layer_is_warned_and_left_out_of_the_plot(models, tmp_path):
    images = _folder(tmp_path, ["a", "b", "c"], [3, 3, 3])
    argv = [
        "scores",
        "--model",
        "cli_sections_models:global_pool",
        "--weights",
        str(models / "gap.pt"),
        "--images",
        str(images),
        "--image-size",
        "16",
        "--layers",
        "relu1",
        "gap",
        "--n-examples",
        "4",
        "--benchmark-draws",
        "2",
        "--out",
        str(tmp_path / "out"),
    ]
    with pytest.MonkeyPatch.context() as mp:
        rec = _Recorder(mp)
        assert main(argv) == 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert "How to read the noise score curve" in html
    for cause in ("Not enough images", "A layer whose map cannot vary", "does not hold for this model"):
        assert cause in html
    assert "one spatial position" in html and "gap" in html
    curve = rec.figures["noise_score_curve"]
    assert "1 position" in curve["ticks"][2] and "1 position" not in curve["ticks"][1]
    scored = [y for y in curve["lines"] if len(y) == 3]
    assert scored and all(np.isnan(y[2]) and np.isfinite(y[:2]).all() for y in scored)
    assert "score curves" in {desc for desc, show in rec.bars if show}


# ---------------------------------------------------------------------- helpers
def test_t_test_p_value_by_hand_and_against_scipy():
    # a = 1, 2, 3 and b = 4, 5, 6: pooled variance 1, t = -3 / sqrt(2/3), 4 degrees of freedom;
    # P(|T_4| >= 3.674) = 0.02131 (table value)
    assert t_test_p_value([1, 2, 3], [4, 5, 6]) == pytest.approx(0.021311641128756, rel=1e-9)
    assert t_test_p_value([1, 1, 1], [1, 1, 1]) == 1.0 and t_test_p_value([1, 1], [0, 0]) == 0.0
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n, shift, equal_var in [(3, 0.0, True), (5, 1.0, False), (10, 0.3, True), (40, 2.0, False)]:
        a, b = rng.normal(shift, 1.0, n), rng.normal(0.0, 2.0, n + 2)
        expected = stats.ttest_ind(a, b, equal_var=equal_var).pvalue
        assert t_test_p_value(a, b, equal_var) == pytest.approx(expected, rel=1e-9, abs=1e-300)
    with pytest.raises(ValueError, match="at least 2"):
        t_test_p_value([1.0], [1.0, 2.0])


def _ctx(fit_x, fit_y, eval_x, eval_y) -> Context:
    return Context(
        model=torch.nn.Identity(),
        report=None,
        fit_images=fit_x,
        fit_labels=fit_y,
        eval_images=eval_x,
        eval_labels=eval_y,
        class_names=["a", "b", "c"],
        layers=[],
        embedding_layer=None,
        concept_layer="",
        random_model=lambda: None,
        device=torch.device("cpu"),
        seed=0,
    )


def test_held_out_split_when_fit_and_eval_are_the_same_images():
    x = torch.rand(48, 1, 2, 2)
    y = torch.tensor([0] * 12 + [1] * 30 + [2] * 6)
    split = held_out_split(_ctx(x, y, x.clone(), y.clone()))  # discover: one folder for both
    assert split.split_here
    assert not (_rows(split.fit_images) & _rows(split.test_images))
    assert len(split.fit_images) + len(split.test_images) == 48
    # a third held out, at least MIN_HELD_OUT; a class under MIN_IMAGES_PER_CLASS is fitted only
    assert split.test_counts(3) == [max(MIN_HELD_OUT, 12 // 3), 30 // 3, 0]
    for images, labels in ((split.fit_images, split.fit_labels), (split.test_images, split.test_labels)):
        for img, c in zip(images, labels):  # labels stay with their images
            assert int(y[(x == img).flatten(1).all(1)][0]) == int(c)


def test_held_out_split_keeps_a_disjoint_eval_set():
    x, y = torch.rand(20, 1, 2, 2), torch.arange(20) % 3
    ex, ey = torch.rand(9, 1, 2, 2), torch.arange(9) % 3
    split = held_out_split(_ctx(x, y, ex, ey))
    assert not split.split_here
    assert torch.equal(split.fit_images, x) and torch.equal(split.test_images, ex)


def test_labels_are_safe_for_matplotlib_and_utf8():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = "caf\udce9 cost_$5 / cost_$10"
    assert text_label(name) == "caf\\xe9 cost_$5 / cost_$10"
    text_label(name).encode("utf-8")  # the report can write it
    fig, ax = plt.subplots()
    ax.set_title(plot_label(name))
    fig.canvas.draw()  # raised before (mathtext, surrogate)
    assert ax.title.get_text() == r"caf\xe9 cost_\$5 / cost_\$10"
    plt.close(fig)


def test_tcav_tests_same_seed_same_scores(models):
    """Captum's CAV classifier shuffles with Python's and numpy's global generators: the section seeds
    them, so a second run (after other draws) gives the same scores, and leaves them as they were."""
    import random

    import cli_sections_models

    from captum_concepts.concept import CoupledNMFConcepts

    torch.manual_seed(0)
    model = cli_sections_models.four_classes().eval()
    x, y = torch.rand(40, 3, 16, 16), torch.arange(40) % 4
    ctx = _ctx(x, y, x, y)
    ctx.model, ctx.layers, ctx.concept_layer, ctx.progress = model, ["relu2"], "relu2", False
    split = held_out_split(ctx)
    cnmf = CoupledNMFConcepts(2, model, layers=["relu2"], max_iter=10, random_state=0).fit(split.fit_images)
    pairs = [(0, 0), (1, 1), (0, 2)]
    first = _sections_tcav.tcav_tests(ctx, cnmf, split.fit_images, split, pairs, k=6)
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    second = _sections_tcav.tcav_tests(ctx, cnmf, split.fit_images, split, pairs, k=6)
    assert random.getstate() == states[0]  # the caller's streams are left as they were
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    assert first.keys() == second.keys() == {(0, 0), (1, 1), (0, 2)}
    for key in first:
        np.testing.assert_array_equal(first[key].scores, second[key].scores)
        np.testing.assert_array_equal(first[key].null, second[key].null)
        assert len(first[key].scores) == 10 and first[key].n_inputs == MIN_HELD_OUT
