"""Metrics: representation scores of an embedding (noise score, noise benchmark, variance
score, drift, score curves over layers) and the generalised pointing game of saliency maps."""

from .._utils.init_docs import document_inits
from ._core.infidelity import embedding_forward_func, embedding_infidelity
from ._core.pointing_game import pointing_game, pointing_game_curve
from ._core.representation_scores import drift_score, noise_benchmark, noise_score, variance_score
from ._core.score_curve import ScoreCurve, score_curve

__all__: list = []
__all__ += ["noise_score", "noise_benchmark", "variance_score", "drift_score", "score_curve", "ScoreCurve"]
__all__ += ["pointing_game", "pointing_game_curve"]
__all__ += ["embedding_forward_func", "embedding_infidelity"]

document_inits(globals(), __all__)  # help(Class.__init__) shows the class's own Args
del document_inits
