"""captum_concepts.visualization: matplotlib figures for every method.

The functions follow ``captum.attr.visualization.visualize_image_attr``: they take plain
tensors or arrays (so they never depend on a fitted object), accept ``plt_fig_axis=(fig, axes)``
to draw into existing axes, ``use_pyplot`` / ``cmap`` / ``title`` / ``fig_size``, return
``(fig, axes)`` and never call ``plt.show()``.

One call form for all: the maps (attributions) first, then the images they are drawn over, as
in Captum's ``visualize_image_attr(attr, original_image)``; ``labels=`` names the entries a
figure shows (rows, concepts, layers) and ``col_labels=`` a grid's columns. The older forms
(``(images, maps)`` order, ``row_labels=``, ``concept_names=``, ``layer_names=``,
``class_names=``, ``concept_labels=``, ``aggregators=``, ``layers=``) still work with a
``DeprecationWarning``. :func:`overlay_attribution` blends one map over one image in one call
(pytorch-grad-cam's ``show_cam_on_image``) and returns the RGB array.
"""

from ._attribution_grid import visualize_attribution_grid, visualize_embedding_attributions
from ._concept_maps import visualize_concept_importance, visualize_concept_maps
from ._concepts import (
    visualize_concept_grid,
    visualize_relevance_matrix,
    visualize_similarity_matrices,
    visualize_tcav_scores,
)
from ._curves import visualize_pointing_game_curve, visualize_score_curve
from ._overlay import overlay_attribution
from ._similarity import visualize_correspondence, visualize_similarity_maps

__all__ = [
    "visualize_attribution_grid",
    "visualize_embedding_attributions",
    "visualize_score_curve",
    "visualize_pointing_game_curve",
    "visualize_concept_grid",
    "visualize_similarity_matrices",
    "visualize_relevance_matrix",
]
__all__ += ["visualize_concept_maps", "visualize_concept_importance"]
__all__ += ["visualize_similarity_maps", "visualize_correspondence"]
__all__ += ["visualize_tcav_scores"]
__all__ += ["overlay_attribution"]
