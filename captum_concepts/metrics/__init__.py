"""captum_concepts.metrics: public names are re-exported here."""

from ._core.pointing_game import pointing_game, pointing_game_curve
from ._core.representation_scores import drift_score, noise_benchmark, noise_score, variance_score
from ._core.score_curve import ScoreCurve, score_curve

__all__: list = []
__all__ += ["noise_score", "noise_benchmark", "variance_score", "drift_score", "score_curve", "ScoreCurve"]
__all__ += ["pointing_game", "pointing_game_curve"]
