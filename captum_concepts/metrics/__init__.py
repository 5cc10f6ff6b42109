"""captum_concepts.metrics: public names are re-exported here."""

from ._core.representation_scores import drift_score, noise_benchmark, noise_score, variance_score

__all__: list = []
__all__ += ["noise_score", "noise_benchmark", "variance_score", "drift_score"]
