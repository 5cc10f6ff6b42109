"""Concepts: semantic vectors of labelled concepts (:class:`SemanticVector`) and concepts
discovered without labels by coupled NMF (:class:`CoupledNMFConcepts`, with out-of-core
fitting through :class:`OutOfCore` and :class:`ActivationStore`)."""

from .._utils.init_docs import document_inits
from ._core.channel_masks import channel_masks
from ._core.concept_maps import (
    ConceptImportance,
    class_importance,
    concept_attribution_maps,
    concept_importance,
    concept_presence_maps,
)
from ._core.concept_sobol import concept_sobol_indices
from ._core.coupled_nmf import CoupledNMFConcepts
from ._core.out_of_core import ActivationStore, OutOfCore
from ._core.semantic_vector import ConceptRanking, PerturbationResult, SemanticVector

__all__: list = []
__all__ += ["SemanticVector", "ConceptRanking", "PerturbationResult"]
__all__ += ["CoupledNMFConcepts"]
__all__ += ["OutOfCore", "ActivationStore"]
__all__ += ["concept_presence_maps", "concept_attribution_maps", "concept_importance", "class_importance"]
__all__ += ["ConceptImportance"]
__all__ += ["channel_masks"]
__all__ += ["concept_sobol_indices"]

document_inits(globals(), __all__)  # help(Class.__init__) shows the class's own Args
del document_inits
