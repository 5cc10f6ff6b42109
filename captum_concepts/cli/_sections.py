"""The analyses shared by ``demo`` and the commands on a user's model: each adds figures,
tables and short texts to a :class:`Report`, one module per method.

Every section uses the public classes and functions of captum_concepts only, the way a user
would, and the plotting functions of :mod:`captum_concepts.visualization`.
"""

from ._context import Context, randomized_copy, run_section
from ._sections_attributions import embedding_attributions, embedding_size
from ._sections_concepts import concept_maps, coupled_nmf
from ._sections_scores import score_curves
from ._sections_semantic import channel_masks_comparison, saliency_comparison, semantic_vectors
from ._sections_similarity import similarity

__all__ = [
    "Context",
    "randomized_copy",
    "run_section",
    "embedding_attributions",
    "embedding_size",
    "score_curves",
    "semantic_vectors",
    "saliency_comparison",
    "channel_masks_comparison",
    "coupled_nmf",
    "concept_maps",
    "similarity",
]
