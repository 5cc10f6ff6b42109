"""captum_concepts.concept: public names are re-exported here."""

from ._core.coupled_nmf import CoupledNMFConcepts
from ._core.semantic_vector import ConceptRanking, PerturbationResult, SemanticVector

__all__: list = []
__all__ += ["SemanticVector", "ConceptRanking", "PerturbationResult"]
__all__ += ["CoupledNMFConcepts"]
