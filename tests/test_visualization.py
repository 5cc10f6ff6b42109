"""captum_concepts.visualization: returned types, axes layout, drawn data, no plt.show()."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from captum_concepts import visualization as viz  # noqa: E402


@pytest.fixture(autouse=True)
def _no_show_and_close(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("plt.show() must never be called")

    monkeypatch.setattr(plt, "show", fail)
    yield
    plt.close("all")


def _scaled(m, sign="all", outlier_perc=2.0):
    """Hand-written reference of Captum's scaling, for what the images must hold."""
    if sign == "absolute_value":
        m = np.abs(m)
    top = np.percentile(np.abs(m), 100 - outlier_perc)
    return np.clip(m / top, -1 if sign == "all" else 0, 1)


def test_public_names():
    for name in viz.__all__:
        assert callable(getattr(viz, name))


def test_attribution_grid_layout_and_data():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 3, 8, 8))
    maps[1, 2] *= 100.0  # a map of another magnitude is scaled on its own
    image = rng.random((1, 8, 8))
    fig, axes = viz.visualize_attribution_grid(
        torch.tensor(maps), image, labels=["a", "b"], col_labels=["x", "y", "z"]
    )
    assert isinstance(fig, Figure)
    assert axes.shape == (2, 4)
    assert all(isinstance(ax, Axes) for ax in axes.reshape(-1))
    # first column: the input image (min-max scaled), the others: the scaled maps
    np.testing.assert_allclose(axes[0, 0].images[0].get_array(), (image[0] - image.min()) / np.ptp(image))
    for r in range(2):
        for c in range(3):
            drawn = axes[r, c + 1].images[0].get_array()
            np.testing.assert_allclose(drawn, _scaled(maps[r, c]), atol=1e-12)
    assert axes[0, 3].get_title() == "z" and axes[1, 0].get_ylabel() == "b"
    # the colour scale is symmetric for sign="all"
    assert axes[0, 1].images[0].get_clim() == (-1.0, 1.0)


def test_attribution_grid_signs_boxes_and_blend():
    maps = np.zeros((1, 1, 6, 6))
    maps[0, 0, 1, 1] = -3.0
    maps[0, 0, 4, 4] = 2.0
    boxes = np.array([[[0, 0, 3, 3], [3, 3, 6, 6]]])
    fig, axes = viz.visualize_attribution_grid(
        maps, np.ones((6, 6)), method="blended_heat_map", sign="absolute_value", boxes=boxes, outlier_perc=0
    )
    ax = axes[0, 1]
    assert len(ax.images) == 2  # the grey image, then the map over it
    drawn = ax.images[1].get_array()
    assert drawn[1, 1] == pytest.approx(1.0) and drawn[4, 4] == pytest.approx(2 / 3)
    assert len(ax.patches) == 2
    assert ax.patches[0].get_xy() == (-0.5, -0.5) and ax.patches[0].get_width() == 3
    with pytest.raises(ValueError, match="sign"):
        viz.visualize_attribution_grid(maps, sign="both")
    with pytest.raises(ValueError, match="blended_heat_map"):
        viz.visualize_attribution_grid(maps, method="blended_heat_map")
    with pytest.raises(ValueError, match="attributions"):
        viz.visualize_attribution_grid(np.zeros((6, 6)))
    with pytest.raises(ValueError, match="boxes"):
        viz.visualize_attribution_grid(maps, boxes=np.zeros((2, 1, 4)))


def test_all_zero_map_draws_zeros():
    fig, axes = viz.visualize_attribution_grid(np.zeros((1, 1, 4, 4)))
    np.testing.assert_array_equal(axes[0, 0].images[0].get_array(), np.zeros((4, 4)))


def test_embedding_attributions_from_mapping_and_existing_axes():
    rng = np.random.default_rng(1)
    attr = {
        agg: {layer: rng.normal(size=(8, 8)) for layer in ("input", "block2.conv")} for agg in ("mean", "var")
    }
    fig = plt.figure()
    axes_in = fig.subplots(2, 2)
    out_fig, axes = viz.visualize_embedding_attributions(attr, plt_fig_axis=(fig, axes_in), title="grid")
    assert out_fig is fig and axes.shape == (2, 2) and axes[0, 0] is axes_in[0, 0]
    assert axes[0, 1].get_title() == "block2.conv" and axes[1, 0].get_ylabel() == "var"
    np.testing.assert_allclose(axes[1, 1].images[0].get_array(), _scaled(attr["var"]["block2.conv"]))
    assert fig._suptitle.get_text() == "grid"
    with pytest.raises(ValueError, match="4 axes"):
        viz.visualize_embedding_attributions(attr, plt_fig_axis=(fig, fig.subplots(1, 3)))
    with pytest.raises(ValueError, match="layers"):
        viz.visualize_embedding_attributions(
            {"mean": {"a": np.zeros((2, 2))}, "var": {"b": np.zeros((2, 2))}}
        )


def test_use_pyplot_false_keeps_pyplot_state_clean():
    before = plt.get_fignums()
    fig, axes = viz.visualize_embedding_attributions(np.zeros((3, 2, 4, 4)), use_pyplot=False)
    assert plt.get_fignums() == before
    assert axes.shape == (3, 2) and axes[2, 0].get_ylabel() == "aggregator 2"
    fig.canvas.draw()  # renders without a pyplot manager


def test_score_curve_lines_and_band():
    trained, random = np.array([0.1, 0.3, 0.5]), np.array([0.1, 0.12, 0.11])
    bench, std = np.array([0.2, 0.21, 0.19]), np.array([0.01, 0.02, 0.03])
    fig, ax = viz.visualize_score_curve(
        {"trained": trained, "random": torch.tensor(random)},
        labels=["input", "block2.conv", "block3.conv"],
        benchmark=bench,
        benchmark_band=std,
        title="noise score",
    )
    assert isinstance(ax, Axes)
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["trained"].get_ydata(), trained)
    np.testing.assert_allclose(lines["random"].get_ydata(), random)
    np.testing.assert_allclose(lines["noise benchmark"].get_ydata(), bench)
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx((bench - std).min()) and band.max() == pytest.approx(
        (bench + std).max()
    )
    assert [t.get_text() for t in ax.get_xticklabels()] == ["input", "block2.conv", "block3.conv"]
    # (low, high) pair form
    fig, ax = viz.visualize_score_curve(trained, benchmark=bench, benchmark_band=(bench - 0.05, bench + 0.05))
    assert ax.collections[0].get_paths()[0].vertices[:, 1].max() == pytest.approx(0.26)
    with pytest.raises(ValueError, match="benchmark"):
        viz.visualize_score_curve(trained, benchmark=np.zeros(2))
    with pytest.raises(ValueError, match="same length"):
        viz.visualize_score_curve({"a": np.zeros(2), "b": np.zeros(3)})


def test_pointing_game_curve():
    energies = np.linspace(0, 1, 5)
    acc = {"semantic": np.array([1.0, 0.9, 0.8, 0.7, 0.6]), "plain": np.array([0.8, 0.6, 0.5, 0.4, 0.3])}
    fig, ax = viz.visualize_pointing_game_curve(energies, acc)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["semantic", "plain"]
    np.testing.assert_allclose(lines[0].get_xdata(), energies * 100)
    np.testing.assert_allclose(lines[1].get_ydata(), acc["plain"])
    with pytest.raises(ValueError, match="one per energy"):
        viz.visualize_pointing_game_curve(energies[:3], acc)


def test_concept_grid_with_masks_and_factors():
    rng = np.random.default_rng(2)
    images = rng.random((3, 4, 1, 8, 8))
    masks = np.zeros((3, 8, 8))
    masks[:, 2:5, 2:5] = 1
    factors = rng.random((3, 8, 8))
    fig, axes = viz.visualize_concept_grid(
        images, masks=masks, factor_images=factors, labels=list("abc")
    )
    assert axes.shape == (3, 5)
    np.testing.assert_allclose(
        axes[1, 0].images[0].get_array(), (factors[1] - factors[1].min()) / np.ptp(factors[1])
    )
    img = images[2, 3, 0]
    np.testing.assert_allclose(axes[2, 4].images[0].get_array(), (img - img.min()) / np.ptp(img))
    assert len(axes[0, 1].collections) >= 1  # the mask outline
    assert axes[2, 0].get_ylabel() == "c"
    fig, axes = viz.visualize_concept_grid(images[:, :2, 0])
    assert axes.shape == (3, 2) and not axes[0, 0].collections
    with pytest.raises(ValueError, match="masks"):
        viz.visualize_concept_grid(images, masks=np.zeros((2, 8, 8)))


def test_similarity_matrices_and_eigenvalues():
    identity = np.eye(4)
    full = np.full((4, 4), 0.5) + 0.5 * np.eye(4)
    fig, axes = viz.visualize_similarity_matrices(
        [identity, torch.tensor(full)], labels=["deep", "shallow"]
    )
    assert len(axes) == 3
    np.testing.assert_allclose(axes[0].images[0].get_array(), identity)
    lines = {line.get_label(): line for line in axes[2].get_lines()}
    np.testing.assert_allclose(lines["deep"].get_ydata(), np.ones(4))
    np.testing.assert_allclose(lines["shallow"].get_ydata(), [2.5, 0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="square"):
        viz.visualize_similarity_matrices([np.zeros((2, 3))])


def test_relevance_matrix():
    rel = np.array([[1.0, 0.2, 0.4], [0.2, 1.0, 0.3], [0.4, 0.3, 1.0]])
    fig, ax = viz.visualize_relevance_matrix(rel, labels=["zero", "one", "two"])
    np.testing.assert_allclose(ax.images[0].get_array(), rel)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["zero", "one", "two"]
    assert len(ax.texts) == 9 and ax.texts[1].get_text() == "0.20"
    fig, ax = viz.visualize_relevance_matrix(np.eye(20), annotate=None)
    assert not ax.texts
    with pytest.raises(ValueError, match="labels must have 3 entries"):
        viz.visualize_relevance_matrix(rel, labels=["a"])


def test_similarity_matrices_eigenvalue_ranks_are_whole_numbers():
    """The spectrum's x-axis counts ranks: its ticks were 2.5, 5.0, 7.5 for ten concepts."""
    import matplotlib

    matplotlib.use("Agg")
    from captum_concepts.visualization import visualize_similarity_matrices

    fig, axes = visualize_similarity_matrices([np.eye(10)], use_pyplot=False)
    ticks = [t for t in axes[-1].get_xticks() if 1 <= t <= 10]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
