"""captum_concepts.attr: public names are re-exported here."""

from ._core.aggregators import aggregate
from ._core.embedding_attribution import EmbeddingAttribution
from ._core.forward_mode import ForwardModeUnsupported, choose_strategy
from ._core.semantic_saliency import SemanticGradientInput, SemanticGuidedBackprop
from ._core.upsampling import upsample_maps

__all__: list = []
__all__ += ["EmbeddingAttribution", "aggregate", "upsample_maps"]
__all__ += ["SemanticGuidedBackprop", "SemanticGradientInput"]
__all__ += ["ForwardModeUnsupported", "choose_strategy"]
