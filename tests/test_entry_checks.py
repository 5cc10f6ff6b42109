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


# ---------------------------------------------------------------------- issue 27.4: the first forward pass
def _grey_cnn(dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 3)
    )
    return model.to(dtype).eval()


@pytest.mark.parametrize(
    "make, fix",
    [
        (lambda: torch.randn(2, 8, 8), r"x\.unsqueeze\(1\)"),  # no channel axis
        (lambda: torch.randn(8, 8), r"x\.unsqueeze\(0\)\.unsqueeze\(0\)"),  # one image, no axes
        (lambda: torch.randn(2, 3, 8, 8), r"RGB .*x\.mean\(1, keepdim=True\)"),
        (lambda: torch.randn(2, 8, 8, 1), r"channels-last .*x\.movedim\(-1, 1\)"),
        (lambda: torch.randn(2, 1, 8, 8).double(), r"float64.*x\.float\(\)"),
        (lambda: (torch.rand(2, 1, 8, 8) * 255).to(torch.uint8), r"x\.float\(\) / 255"),
    ],
)
def test_first_forward_failure_names_inputs_layer_and_fix(make, fix):
    """Shape and dtype mistakes surface as the package's error: the inputs' shape, dtype and device,
    the first layer's expectation, the likely fix, chained to PyTorch's error."""
    from captum_concepts._utils.first_pass import ForwardPassError
    from captum_concepts.attr import EmbeddingAttribution

    x = make()
    ea = EmbeddingAttribution(_grey_cnn(), layer="1", embedding_aggregator="mean")
    with pytest.raises(ForwardPassError, match=fix) as info:
        ea.attribute(x, show_progress=False)
    text = str(info.value)
    assert f"inputs[0]: shape {tuple(x.shape)}, dtype {x.dtype}, device cpu" in text
    assert "first layer '0' (Conv2d) expects (N, 1, H, W)" in text and "torch.float32 on cpu" in text
    assert isinstance(info.value.__cause__, RuntimeError) and not isinstance(info.value.__cause__, ValueError)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)


def test_float64_model_with_float32_inputs():
    from captum_concepts._utils.first_pass import ForwardPassError
    from captum_concepts.attr import EmbeddingAttribution

    ea = EmbeddingAttribution(_grey_cnn(torch.float64), layer="1", embedding_aggregator="mean")
    with pytest.raises(ForwardPassError, match=r"parameters torch\.float64: x\.double\(\), or model\.to"):
        ea.attribute(torch.randn(2, 1, 8, 8), show_progress=False)


def test_uint8_images_into_the_input_attribution_are_not_called_token_ids():
    from captum_concepts.attr import EmbeddingAttribution

    x = (torch.rand(2, 1, 8, 8) * 255).to(torch.uint8)
    with pytest.raises(TypeError, match=r"x\.float\(\) / 255") as info:
        EmbeddingAttribution(_grey_cnn()).attribute(x, show_progress=False)
    assert "token" not in str(info.value)


def test_model_on_another_device_than_the_inputs():
    """Checked without a GPU: a model on the 'meta' device and inputs on the CPU."""
    from captum_concepts._utils.first_pass import ForwardPassError, forward_failure

    model = _grey_cnn().to("meta")
    x = torch.randn(2, 1, 8, 8)
    try:
        model(x)
    except RuntimeError as err:
        error = forward_failure(err, model, (x,), "EmbeddingAttribution")
    text = str(error)
    assert isinstance(error, ForwardPassError)
    assert "inputs on cpu, model on meta" in text and "x.to('meta')" in text and "model.to(x.device)" in text


def test_estimators_and_saliency_explain_the_first_pass_too():
    from captum_concepts._utils.first_pass import ForwardPassError
    from captum_concepts.attr import SemanticGuidedBackprop
    from captum_concepts.concept import SemanticVector

    model = _grey_cnn()
    x, y = torch.randn(6, 8, 8), torch.arange(6) % 3
    with pytest.raises(ForwardPassError, match=r"(?s)SemanticVector.*unsqueeze\(1\)"):
        SemanticVector(model, "1").fit_from_labels((x, y), show_progress=False)
    masks = torch.ones(3, 4, 6, 6, dtype=torch.bool)
    with pytest.raises(ForwardPassError, match=r"(?s)SemanticGuidedBackprop.attribute.*unsqueeze\(1\)"):
        SemanticGuidedBackprop(model, "1", masks).attribute(x, target=0)


def test_the_package_own_errors_pass_through_unchanged():
    """A layer run twice is the package's error already: not re-wrapped as a forward failure."""
    from captum_concepts._utils.first_pass import ForwardPassError
    from captum_concepts.attr import EmbeddingAttribution

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.lin(self.lin(x))

    with pytest.raises(ValueError, match="run 2 times") as info:
        EmbeddingAttribution(Twice().eval(), layer="lin").attribute(torch.randn(2, 3), show_progress=False)
    assert not isinstance(info.value, ForwardPassError)


def test_semantic_vector_refuses_a_layer_run_twice_like_every_entry():
    from captum_concepts.concept import SemanticVector

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)
            self.act = torch.nn.ReLU()

        def forward(self, x):
            return self.act(self.lin(self.act(self.lin(x))))

    x, y = torch.randn(8, 3), torch.arange(8) % 2
    with pytest.raises(ValueError, match=r"layer='act' was run 2 times in one forward pass"):
        SemanticVector(Twice().eval(), "act", batch_size=4).fit_from_labels((x, y), show_progress=False)
    with pytest.raises(ValueError, match="run 2 times"):
        SemanticVector(Twice().eval(), "act").fit({"a": x}, show_progress=False)


def test_an_error_of_the_users_own_forward_code_passes_through_unchanged():
    from captum_concepts.attr import EmbeddingAttribution

    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x):
            raise RuntimeError("the user's own failure")

    error = None
    try:
        EmbeddingAttribution(Broken().eval()).attribute(torch.randn(2, 3), show_progress=False)
    except RuntimeError as err:
        error = err
    assert type(error) is RuntimeError and str(error) == "the user's own failure"
