"""visualize_tcav_scores: grouped bars, one group per score set, returned as (fig, ax)."""

import numpy as np
import pytest

from captum_concepts.visualization import visualize_tcav_scores


def test_tcav_bars_hold_the_scores_side_by_side():
    top, control = np.array([0.9, 0.2, 0.6]), np.array([0.5, 0.1, 0.4])
    fig, ax = visualize_tcav_scores(
        {"top class": top, "control class": control}, labels=["a", "b", "c"], use_pyplot=False
    )
    bars = ax.patches
    assert [round(b.get_height(), 6) for b in bars] == [0.9, 0.2, 0.6, 0.5, 0.1, 0.4]
    centres = [b.get_x() + b.get_width() / 2 for b in bars]
    np.testing.assert_allclose(centres, [-0.2, 0.8, 1.8, 0.2, 1.2, 2.2])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert ax.get_lines()[0].get_ydata()[0] == 0.5  # the chance line
    with pytest.raises(ValueError, match="one score per concept"):
        visualize_tcav_scores({"x": [0.1, 0.2], "y": [0.3]}, use_pyplot=False)
