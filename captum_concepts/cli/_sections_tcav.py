"""TCAV of the coupled-NMF concepts as a statistical test, the way Kim et al. (2018, "Statistical
significance testing") and Captum's TCAV tutorial run it:

- held out: the concepts (coupled NMF) and their CAVs are fitted on one part of the images, the TCAV
  scores are computed on images used for neither (:func:`held_out_split`);
- repeated: each concept is tested against each of ``R`` random concept sets (Captum's
  experimental sets ``[concept, random_r]``), and each class gets a null distribution from random vs
  random sets (``[random_0, random_r]``);
- tested: a two-sided two-sample t-test of the concept's ``R`` scores against the ``R`` null scores
  (Student's, pooled variance, as the TCAV reference code and the tutorial's ``ttest_ind``).
"""

from __future__ import annotations

import hashlib
import math
import random
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._utils.progress import progress_bar
from ._context import Context

MIN_IMAGES_PER_CLASS = 10  # a class is tested only with at least this many images ...
MIN_HELD_OUT = 5  # ... at least this many of them held out as TCAV's inputs
ALPHA = 0.05  # significance level, Bonferroni-corrected over the tests of one table


def inputs_per_class(ctx: Context) -> int:
    """At most this many held-out images of a class are TCAV's inputs."""
    return 20 if ctx.quick else 60


def n_random_sets(ctx: Context) -> int:
    """``R``: random concept sets per concept (``ctx.tcav_random_sets`` when the context has it)."""
    return int(getattr(ctx, "tcav_random_sets", 5 if ctx.quick else 10))


@dataclass
class HeldOutSplit:
    """Images to fit concepts and CAVs on, and held-out images TCAV scores (no image in both)."""

    fit_images: torch.Tensor
    fit_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    split_here: bool  # True: split from ctx's images here; False: ctx's eval set was already disjoint

    def test_counts(self, n_classes: int) -> List[int]:
        return torch.bincount(self.test_labels.long(), minlength=n_classes).tolist()


def _fingerprint(image: torch.Tensor) -> bytes:
    return hashlib.blake2b(image.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()


def held_out_split(ctx: Context) -> HeldOutSplit:
    """Split so that TCAV never scores an image the concepts or CAVs were fitted on.

    When no image of ``ctx.eval_images`` is in ``ctx.fit_images`` (the demo's test split), those
    are the held-out images. Otherwise (``discover`` explains and fits the same folder) the
    images are pooled and split per class: a class with at least :data:`MIN_IMAGES_PER_CLASS`
    images holds out a third of them (at least :data:`MIN_HELD_OUT`, at most
    :func:`inputs_per_class`); smaller classes are used for fitting only.
    """
    seen = {_fingerprint(x) for x in ctx.fit_images}
    fresh = [i for i, x in enumerate(ctx.eval_images) if _fingerprint(x) not in seen]
    if len(fresh) == len(ctx.eval_images):
        return HeldOutSplit(ctx.fit_images, ctx.fit_labels, ctx.eval_images, ctx.eval_labels, False)
    index = torch.tensor(fresh, dtype=torch.long)
    images = torch.cat([ctx.fit_images, ctx.eval_images[index]])
    labels = torch.cat([ctx.fit_labels, ctx.eval_labels[index]])
    gen = torch.Generator().manual_seed(ctx.seed)
    held: List[torch.Tensor] = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        if len(members) >= MIN_IMAGES_PER_CLASS:
            held.append(members[: min(max(MIN_HELD_OUT, len(members) // 3), inputs_per_class(ctx))])
    test = torch.cat(held) if held else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(len(images), dtype=torch.bool)
    keep[test] = False
    return HeldOutSplit(images[keep], labels[keep], images[test], labels[test], True)


@dataclass
class TcavTest:
    """TCAV of one concept for one class over ``R`` random sets, and its test against the null."""

    scores: np.ndarray  # (R,) sign-count score of [concept, random_r] on the class's held-out images
    null: np.ndarray  # (R,) the same for [random_0, random_r]
    p_value: float
    n_inputs: int

    @property
    def mean(self) -> float:
        return float(self.scores.mean())

    @property
    def std(self) -> float:
        return float(self.scores.std(ddof=1))


def tcav_tests(
    ctx: Context,
    cnmf: object,
    fit_images: torch.Tensor,
    split: HeldOutSplit,
    pairs: Sequence[Tuple[int, int]],
    k: int,
) -> Dict[Tuple[int, int], TcavTest]:
    """Test every ``(concept, class)`` pair; classes with fewer than :data:`MIN_HELD_OUT` held-out
    images are left out of the result.

    ``fit_images``: the images ``cnmf`` was fitted on, in fit order (its concepts' top-``k``
    examples and the random sets of ``k`` images are drawn from them).
    """
    from captum.concept import Concept
    from torch.utils.data import DataLoader

    r_sets = n_random_sets(ctx)
    concepts = cnmf.to_captum_concepts(fit_images, k=k, first_id=r_sets + 1)
    gen = torch.Generator().manual_seed(ctx.seed)
    draws = [torch.randperm(len(fit_images), generator=gen)[:k] for _ in range(r_sets + 1)]
    randoms = [
        Concept(r, f"random_{r}", DataLoader(fit_images[d], batch_size=k)) for r, d in enumerate(draws)
    ]
    # Captum's CAV classifier splits its examples with Python's global generator (random.shuffle) and
    # fits sklearn's SGDClassifier, which shuffles with numpy's (random_state=None): same seed, same
    # report, and the caller's streams are left as they were
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(ctx.seed)
    np.random.seed(ctx.seed)
    torch.manual_seed(ctx.seed)
    try:
        return _run_tcav(ctx, concepts, randoms, split, pairs)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)


def _run_tcav(
    ctx: Context,
    concepts: list,
    randoms: list,
    split: HeldOutSplit,
    pairs: Sequence[Tuple[int, int]],
) -> Dict[Tuple[int, int], TcavTest]:
    from captum.concept import TCAV

    layer = ctx.concept_layer
    cap = inputs_per_class(ctx)
    r_sets = len(randoms) - 1
    results: Dict[Tuple[int, int], TcavTest] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tcav = TCAV(ctx.model, [layer], save_path=tmp, show_progress=False)
        classes = sorted({c for _, c in pairs})
        for c in progress_bar(classes, show=ctx.progress, desc="TCAV (per class)", unit="class"):
            inputs = split.test_images[split.test_labels == c][:cap]
            if len(inputs) < MIN_HELD_OUT:
                continue
            tested = sorted({j for j, cc in pairs if cc == c})
            null_sets = [[randoms[0], randoms[r]] for r in range(1, r_sets + 1)]
            concept_sets = [[concepts[j], randoms[r]] for j in tested for r in range(1, r_sets + 1)]
            sets = null_sets + concept_sets
            out = tcav.interpret(inputs.to(ctx.device), sets, target=c)
            # Captum keys each experimental set by its concepts' ids; entry 0: the set's first concept
            score = np.array(
                [float(out["-".join(str(s.id) for s in pair)][layer]["sign_count"][0]) for pair in sets]
            )
            null = score[:r_sets]
            for i, j in enumerate(tested):
                scores = score[r_sets * (i + 1) : r_sets * (i + 2)]
                results[j, c] = TcavTest(scores, null, t_test_p_value(scores, null), len(inputs))
    return results


def gradient_is_image_independent(ctx: Context, images: torch.Tensor, target: int) -> bool:
    """True when the gradient of output ``target`` w.r.t. ``ctx.concept_layer`` is the same for every
    one of ``images`` (N >= 2), as when the layer reaches the output through linear operations only
    (global average pooling and a linear head): every image's directional derivative along a CAV then
    has the same sign, and each TCAV score is 0 or 1 whatever the images."""
    from captum._utils.gradient import compute_layer_gradients_and_eval

    from .._utils.layers import resolve_layer

    if len(images) < 2:
        return False
    module = resolve_layer(ctx.model, ctx.concept_layer)
    with torch.enable_grad():
        grads, _ = compute_layer_gradients_and_eval(
            ctx.model, module, images.to(ctx.device), target_ind=target
        )
    g = grads[0].detach().flatten(1)
    scale = float(g.abs().max())
    return scale > 0 and float((g - g[:1]).abs().max()) <= 1e-5 * scale


def t_test_p_value(a: Sequence[float], b: Sequence[float], equal_var: bool = True) -> float:
    """Two-sided p-value of the two-sample t-test of ``a`` against ``b`` (each at least 2 values).

    ``equal_var=True``: Student's test with pooled variance (``scipy.stats.ttest_ind``'s default);
    False: Welch's test. With both samples constant the p-value is 1 when their means agree and 0
    otherwise; NaN in either sample gives NaN.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        raise ValueError(f"the t-test needs at least 2 values per sample, got {na} and {nb}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    va, vb = a.var(ddof=1), b.var(ddof=1)
    if equal_var:
        df = na + nb - 2.0
        se2 = ((na - 1) * va + (nb - 1) * vb) / df * (1.0 / na + 1.0 / nb)
    else:
        se2 = va / na + vb / nb
        df = se2**2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1)) if se2 > 0 else 1.0
    diff = float(a.mean() - b.mean())
    if se2 <= 0:
        return 1.0 if diff == 0 else 0.0
    t = diff / math.sqrt(se2)
    # P(|T| >= |t|) for Student's t with df degrees of freedom = I_{df / (df + t^2)}(df / 2, 1 / 2)
    return _regularized_beta(df / 2.0, 0.5, df / (df + t * t))


def _regularized_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` (continued fraction, Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # the continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry otherwise
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float, max_terms: int = 500, eps: float = 1e-15) -> float:
    tiny = 1e-300

    def nonzero(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / nonzero(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, max_terms):
        even = m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m))
        d = 1.0 / nonzero(1.0 + even * d)
        c = nonzero(1.0 + even / c)
        h *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))
        d = 1.0 / nonzero(1.0 + odd * d)
        c = nonzero(1.0 + odd / c)
        h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def significant(tests: Dict[Tuple[int, int], TcavTest]) -> Tuple[float, Dict[Tuple[int, int], bool]]:
    """The Bonferroni level ``ALPHA / m`` over the ``m`` tests, and which tests are below it."""
    level = ALPHA / max(1, len(tests))
    return level, {key: bool(t.p_value < level) for key, t in tests.items()}


def format_p(p: Optional[float]) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"
