"""One call form for every visualization function: maps first then images, ``labels=`` for the
names; the old forms still work with a DeprecationWarning; one-call overlay of a map on an image."""

from __future__ import annotations

import inspect
import warnings

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import captum_concepts.visualization as viz

OLD_LABEL_NAMES = {"row_labels", "concept_names", "layer_names", "class_names", "concept_labels"}
G = np.random.default_rng(0)


def _no_warning(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, use_pyplot=False, **kwargs)


def _texts(fig):
    out = []
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    return [t for t in out if t]


def test_every_function_names_its_labels_labels_and_takes_maps_before_images():
    for name in viz.__all__:
        params = list(inspect.signature(getattr(viz, name)).parameters)
        assert not OLD_LABEL_NAMES & set(params), (name, params)
        for maps, images in (("maps", "images"), ("attributions", "original_images"),
                             ("attributions", "original_image"), ("maps_a", "images_a"),
                             ("correspondence", "image_a"), ("attribution", "image")):
            if maps in params and images in params:
                assert params.index(maps) < params.index(images), (name, params)


R4 = G.random((2, 3, 5, 5))
LABELS = ["p", "q", "r"]
CASES = [  # (function, positional args, old keyword, new keyword, labels)
    (viz.visualize_attribution_grid, (R4,), "row_labels", "labels", ["p", "q"]),
    (viz.visualize_embedding_attributions, (R4,), "aggregators", "labels", ["p", "q"]),
    (viz.visualize_embedding_attributions, (R4,), "layers", "col_labels", LABELS),
    (viz.visualize_concept_maps, (R4, G.random((2, 5, 5))), "concept_names", "labels", LABELS),
    (viz.visualize_concept_importance, (G.random((2, 3)),), "concept_names", "labels", LABELS),
    (viz.visualize_concept_importance, (G.random((2, 3)),), "class_names", "col_labels", ["p", "q"]),
    (viz.visualize_concept_grid, (G.random((3, 2, 5, 5)),), "concept_names", "labels", LABELS),
    (viz.visualize_similarity_matrices, (np.stack([np.eye(3)] * 3),), "layer_names", "labels", LABELS),
    (viz.visualize_relevance_matrix, (np.eye(3),), "concept_names", "labels", LABELS),
    (viz.visualize_tcav_scores, (G.random(3),), "concept_labels", "labels", LABELS),
    (viz.visualize_score_curve, (G.random(3),), "layer_names", "labels", LABELS),
]


@pytest.mark.parametrize("fn, args, old, new, labels", CASES, ids=[f"{c[0].__name__}-{c[2]}" for c in CASES])
def test_labels_keyword_and_its_deprecated_names(fn, args, old, new, labels):
    fig, _ = _no_warning(fn, *args, **{new: labels})
    shown = _texts(fig)
    assert set(labels) <= set(shown), shown
    with pytest.warns(DeprecationWarning, match=rf"{fn.__name__}\({old}=\.\.\.\) is deprecated; pass {new}="):
        old_fig, _ = fn(*args, use_pyplot=False, **{old: labels})
    assert _texts(old_fig) == shown
    with pytest.raises(TypeError, match=rf"pass {new}= only \({old}= is its deprecated name\)"):
        fn(*args, use_pyplot=False, **{old: labels, new: labels})


def _arrays(fig):
    return [np.asarray(im.get_array()) for ax in fig.axes for im in ax.images]


def _same_figure(a, b):
    xs, ys = _arrays(a), _arrays(b)
    assert len(xs) == len(ys) > 0
    for x, y in zip(xs, ys):
        np.testing.assert_array_equal(x, y)


IMAGES = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
MAPS = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("images", [IMAGES, IMAGES[:, 0], IMAGES.expand(2, 3, 6, 6).permute(0, 2, 3, 1)],
                         ids=["channels-first", "grey", "channels-last"])
def test_concept_maps_take_maps_first_and_the_old_order_still_works(images):
    new, axes = _no_warning(viz.visualize_concept_maps, MAPS, images)
    assert axes.shape == (2, 4)
    # the map drawn over image 1 in column 2 is MAPS[1, 2], the image under it images[1]
    drawn = axes[1, 2].images
    assert len(drawn) == 2 and np.asarray(drawn[1].get_array()).shape == (6, 6)
    by_keyword, _ = _no_warning(viz.visualize_concept_maps, images=images, maps=MAPS)
    _same_figure(new, by_keyword)
    with pytest.warns(DeprecationWarning, match=r"visualize_concept_maps\(images, maps, \.\.\.\) is the "
                                                r"deprecated argument order; pass \(maps, images, \.\.\.\)"):
        old, _ = viz.visualize_concept_maps(images, MAPS, use_pyplot=False)
    _same_figure(new, old)
    with pytest.warns(DeprecationWarning, match="deprecated argument order"):
        old_mixed, _ = viz.visualize_concept_maps(images, maps=MAPS, use_pyplot=False)
    _same_figure(new, old_mixed)


def test_similarity_maps_take_maps_first_and_the_old_order_still_works():
    ma, mb = torch.randn(2, 6, 6), torch.randn(2, 6, 6)
    new, axes = _no_warning(viz.visualize_similarity_maps, ma, mb, IMAGES, IMAGES.flip(0))
    assert axes.shape == (2, 4)
    with pytest.warns(DeprecationWarning, match=r"pass \(maps_a, maps_b, images_a, images_b, \.\.\.\)"):
        old, _ = viz.visualize_similarity_maps(IMAGES, IMAGES.flip(0), ma, mb, use_pyplot=False)
    _same_figure(new, old)
    with pytest.warns(DeprecationWarning, match="deprecated argument order"):
        mixed, _ = viz.visualize_similarity_maps(
            IMAGES, IMAGES.flip(0), maps_a=ma, maps_b=mb, use_pyplot=False
        )
    _same_figure(new, mixed)


@pytest.mark.parametrize("image", [IMAGES[0], IMAGES[0, 0]], ids=["3-D", "grey 2-D"])
def test_correspondence_takes_the_matrix_first_and_the_old_order_still_works(image):
    corr = torch.randn(9, 4, generator=torch.Generator().manual_seed(3))
    new, _ = _no_warning(viz.visualize_correspondence, corr, image, image, (3, 3), (2, 2))
    assert len(new.artists) == 10  # k=10 links of the 36
    with pytest.warns(DeprecationWarning, match=r"pass \(correspondence, image_a, image_b, \.\.\.\)"):
        old, _ = viz.visualize_correspondence(image, image, corr, (3, 3), (2, 2), use_pyplot=False)
    _same_figure(new, old)
    assert [a.get_linewidth() for a in old.artists] == [a.get_linewidth() for a in new.artists]
    with pytest.warns(DeprecationWarning, match="deprecated argument order"):
        viz.visualize_correspondence(image, image, corr, grid_a=(3, 3), grid_b=(2, 2), use_pyplot=False)


# ---------------------------------------------------------------------- overlay
def test_overlay_is_the_blend_of_the_image_and_the_coloured_map():
    image = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(4))  # RGB, channels first
    m = torch.zeros(4, 5)
    m[1, 2], m[3, 0] = 2e-6, -1e-6  # a var-sized map: the scale does not matter
    out = viz.overlay_attribution(m, image, alpha=0.4, outlier_perc=0)
    assert out.shape == (4, 5, 3) and out.dtype == np.float64
    shown = image.permute(1, 2, 0).double().numpy()
    shown = (shown - shown.min()) / (shown.max() - shown.min())
    jet = matplotlib.colormaps["jet"]
    # absolute value, divided by the largest: 1 at (1, 2), 0.5 at (3, 0), 0 elsewhere
    for (i, j), level in (((1, 2), 1.0), ((3, 0), 0.5), ((0, 0), 0.0)):
        ref = 0.6 * shown[i, j] + 0.4 * np.asarray(jet(level)[:3])
        np.testing.assert_allclose(out[i, j], ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(viz.overlay_attribution(m * 1e6, image, alpha=0.4, outlier_perc=0), out)
    np.testing.assert_allclose(viz.overlay_attribution(m, image, alpha=0.0), shown, atol=1e-12)
    signed = viz.overlay_attribution(m, image, sign="all", alpha=1.0, outlier_perc=0)
    np.testing.assert_allclose(signed[0, 0], matplotlib.colormaps["bwr"](0.5)[:3], atol=1e-12)  # 0 is white


def test_overlay_draws_on_an_axis_and_takes_grey_images_and_refuses_mismatched_sizes():
    fig = Figure()
    ax = fig.add_subplot()
    m, image = torch.rand(6, 6), IMAGES[0]
    out = viz.overlay_attribution(m.unsqueeze(0), image, ax=ax)
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), out)
    assert not ax.get_xticks().size and out.shape == (6, 6, 3)
    grey = viz.overlay_attribution(m, image[0], alpha=0.0)
    assert np.allclose(grey[..., 0], grey[..., 1]) and np.allclose(grey[..., 1], grey[..., 2])
    with pytest.raises(ValueError, match=r"attribution \(3, 3\) and image \(6, 6\) must have the same"):
        viz.overlay_attribution(torch.rand(3, 3), image)
    with pytest.raises(ValueError, match=r"attribution must have shape \(H, W\)"):
        viz.overlay_attribution(MAPS, image)
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay_attribution(m, image, alpha=2)
