"""Attribution methods: explain embeddings (:class:`EmbeddingAttribution`, its aggregators and
upsampling) and class-discriminative semantic saliency (:class:`SemanticGuidedBackprop`,
:class:`SemanticGradientInput`)."""

from .._utils.init_docs import document_inits
from .._utils.layout import channels_last, tokens_to_grid
from ._core.aggregators import aggregate
from ._core.captum_interop import as_captum_image, as_captum_layer_attr, as_image_attr, as_input_attr
from ._core.costs import PassCosts
from ._core.embedding_attribution import EmbeddingAttribution
from ._core.forward_mode import ForwardModeUnsupported
from ._core.semantic_saliency import SemanticGradientInput, SemanticGuidedBackprop, SemanticMaskSource
from ._core.similarity import SimilarityAttribution
from ._core.strategies import Plan, choose_strategy
from ._core.upsampling import upsample_maps

__all__: list = []
__all__ += ["EmbeddingAttribution", "aggregate", "upsample_maps"]
__all__ += ["SemanticGuidedBackprop", "SemanticGradientInput", "SemanticMaskSource"]
__all__ += ["tokens_to_grid", "channels_last"]
__all__ += ["SimilarityAttribution"]
__all__ += ["ForwardModeUnsupported", "choose_strategy", "Plan", "PassCosts"]
__all__ += ["as_captum_layer_attr", "as_image_attr", "as_captum_image", "as_input_attr"]

document_inits(globals(), __all__)  # help(Class.__init__) shows the class's own Args
del document_inits
