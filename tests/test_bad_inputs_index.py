"""Bad-input matrix: every public class and function against what users throw at it.

Each case either raises a clear ``TypeError``/``ValueError``/``RuntimeError`` whose message names the
argument (or, for inputs the *model* cannot take -- wrong channel count, wrong dtype, a model on
another device -- a ``ForwardPassError``, a ``RuntimeError`` that quotes PyTorch's error, names the
inputs and the fix and chains the original; a missing forward argument: PyTorch's error), or
returns a documented correct result that the case checks. After every case the models involved
have no hooks left and the same modes, ``requires_grad`` flags and parameters.

The cases live by subject in ``test_bad_inputs_attr.py``, ``test_bad_inputs_concept.py``,
``test_bad_inputs_metrics.py`` and ``test_bad_inputs_visualization.py``; their shared models and
inputs in ``_bad_inputs_common.py``. Case counts (kept equal to those files by
``test_case_counts_match_the_docstring``):

- ERROR_CASES: 202 cases that must raise a clear error: EmbeddingAttribution 32,
  SemanticGuidedBackprop and SemanticGradientInput 17 each (34), SimilarityAttribution 6,
  SemanticVector 26,
  CoupledNMFConcepts 46, its out-of-core mode (OutOfCore, ActivationStore, fit_store) 13,
  noise/benchmark/variance/drift scores and score_curve 27, pointing game 13,
  visualization 5.
- RESULT_CASES: 32 cases with a documented correct result (D = 1 equals Captum, in-place and reused
  ReLUs equal the plain model, train-mode models explained in eval mode and left in train mode,
  extra forward arguments, constant/zero maps and layers, zero rows/columns, rank > data, NaN
  confined to its example, empty boxes -> NaN, never a hit).
- Hypothesis properties: 4 (20 generated examples each): scores within [0, 1] and [0, 1/4] on arbitrary
  (constant, zero, spiky, negative) maps; pointing game in {0, 1} and equal to the classic game at
  energy 0; coupled NMF finite and non-negative on sparse data with zero rows/columns; embedding
  attributions finite on finite inputs.

See RELIABILITY.md for the table of faults and what each returns.
"""

from __future__ import annotations

import test_bad_inputs_attr
import test_bad_inputs_concept
import test_bad_inputs_metrics
import test_bad_inputs_visualization

SUBJECTS = (
    test_bad_inputs_attr,
    test_bad_inputs_concept,
    test_bad_inputs_metrics,
    test_bad_inputs_visualization,
)


def test_case_counts_match_the_docstring():
    doc = __doc__
    errors = [p for m in SUBJECTS for p in m.ERROR_CASES]
    results = [p for m in SUBJECTS for p in getattr(m, "RESULT_CASES", [])]
    properties = [f for m in SUBJECTS for f in vars(m).values() if hasattr(f, "hypothesis")]
    assert f"ERROR_CASES: {len(errors)} cases" in doc, len(errors)
    assert f"RESULT_CASES: {len(results)} cases" in doc, len(results)
    assert f"Hypothesis properties: {len(properties)} " in doc, len(properties)
    ids = [p.id for p in errors + results]
    assert len(ids) == len(set(ids))
