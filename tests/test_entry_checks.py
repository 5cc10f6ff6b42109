"""The shared entry mechanisms: the ``validated`` decorator, the gradient-mode check and ``warn_user``."""

import warnings

import pytest
import torch

from captum_concepts._utils.validation import (
    NONE,
    AnyOf,
    Int,
    InvalidParameterError,
    NotFittedError,
    check_fitted,
    validated,
)
from captum_concepts._utils.warn import warn_user


class _Estimator:
    _parameter_constraints = {"n": Int(1)}

    def __init__(self, n):
        self.n = n
        self.calls = 0

    def _check_fitted(self):
        check_fitted(self, "fitted_")

    @validated(grad=True, args={"max_iter": AnyOf(NONE, Int(1))})
    def fit(self, x, max_iter=None):
        """Fit."""
        self.calls += 1
        self.fitted_ = True
        return self

    @validated(fitted=True)
    def transform(self, x):
        self.calls += 1
        return x


def test_validated_checks_before_the_body():
    est = _Estimator(0)
    with pytest.raises(InvalidParameterError, match="n must be an int >= 1"):
        est.fit(torch.ones(2))
    est.n = 2
    with pytest.raises(InvalidParameterError, match="max_iter must be an int >= 1 or None"):
        est.fit(torch.ones(2), max_iter=0)
    with pytest.raises(NotFittedError):
        est.transform(torch.ones(2))
    assert est.calls == 0
    assert est.fit(torch.ones(2), max_iter=3) is est and est.calls == 1
    assert _Estimator.fit.__doc__ == "Fit." and _Estimator.fit.__name__ == "fit"


def test_validated_refuses_unknown_argument_names():
    with pytest.raises(TypeError, match="no argument"):
        validated(args={"nope": Int(1)})(lambda x: x)


def test_inference_mode_is_named_with_the_fix():
    est = _Estimator(1)
    with torch.inference_mode():
        made_inside = torch.ones(2)
        with pytest.raises(RuntimeError, match=r"inside torch\.inference_mode\(\)"):
            est.fit(torch.ones(2))
    with pytest.raises(RuntimeError, match=r"x\[0\] is an inference tensor.*clone"):
        est.fit((made_inside,))
    with torch.no_grad():  # no_grad is fine
        est.fit(torch.ones(2))
    assert est.calls == 1


def _inner():
    warn_user("deep")


def _outer():
    _inner()


def test_warn_user_points_at_the_first_frame_outside_the_package():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _outer()
    # this test module is outside the package: the warning is attributed to _inner's line
    assert caught[0].filename == __file__
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from captum_concepts._utils.layers import uncompiled

        compiled = torch.compile(torch.nn.Linear(2, 2))
        uncompiled(compiled)
    assert [w.filename for w in caught if "torch.compile" in str(w.message)] == [__file__]


def test_guard_replace_hands_the_rest_of_the_model_the_new_value_and_is_undone():
    from captum_concepts._utils.hooks import ModelGuard

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    x = torch.randn(4, 3)
    expected = model[2](torch.zeros(4, 3))
    with ModelGuard(model) as guard:
        guard.replace(model[1], lambda out: torch.zeros_like(out))
        torch.testing.assert_close(model(x), expected)
    with ModelGuard(model) as guard:
        guard.replace(model[2], lambda args: (args[0] * 0,), of="input")
        torch.testing.assert_close(model(x), expected)
        guard.replace(model[0], lambda out: None)  # None keeps the value
        torch.testing.assert_close(model(x), expected)
    assert not model[1]._forward_hooks and not model[2]._forward_pre_hooks
    reference = model[2](model[1](model[0](x)))
    assert reference.abs().sum() > 0 and not torch.allclose(model(x), expected)


def test_an_inherited_entry_is_named_after_the_class_it_is_called_on():
    class PublicEstimator(_Estimator):
        pass

    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"^PublicEstimator\.fit needs gradients"):
        PublicEstimator(1).fit(torch.ones(2))
