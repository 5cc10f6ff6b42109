import pytest
import torch
from captum.testing.helpers.basic_models import BasicModel_ConvNet_One_Conv
from torch import nn

from captum_concepts._utils.hooks import ModelGuard
from captum_concepts.testing import assert_same_state, count_hooks, model_state


class Boom(RuntimeError):
    pass


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))


def test_hooks_removed_and_state_restored_on_success():
    model = _model().train()
    model[3].weight.requires_grad_(False)
    before = model_state(model)
    seen = []
    with pytest.warns(UserWarning, match="training mode"):
        with ModelGuard(model, freeze_parameters=True) as guard:
            guard.register_forward_hook(model[0], lambda m, i, o: seen.append(o.shape))
            guard.register_forward_pre_hook(model[0], lambda m, i: None)
            guard.register_full_backward_hook(model[3], lambda m, gi, go: None)
            guard.set_attribute(model[1], "inplace", False)
            assert count_hooks(model) == 3
            assert not model.training and not model[0].training
            assert not any(p.requires_grad for p in model.parameters())
            assert model[1].inplace is False
            x = torch.rand(2, 1, 8, 8, requires_grad=True)
            model(x).sum().backward()
    assert seen == [torch.Size([2, 2, 6, 6])]
    assert_same_state(before, model)
    assert model.training and model[3].weight.requires_grad is False and model[0].weight.requires_grad


@pytest.mark.parametrize("where", ["forward_hook", "backward_hook", "body"])
def test_everything_restored_after_exception(where):
    model = _model().train()
    model[2].eval()  # mixed per-module modes must come back as they were
    before = model_state(model)

    def fail_forward(module, inputs, output):
        raise Boom("forward")

    def fail_backward(module, grad_in, grad_out):
        raise Boom("backward")

    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    with pytest.raises(Boom):
        with pytest.warns(UserWarning):
            with ModelGuard(model, freeze_parameters=True) as guard:
                guard.register_forward_hook(model[0], (lambda m, i, o: None))
                guard.set_attribute(model[1], "inplace", False)
                if where == "forward_hook":
                    guard.register_forward_hook(model[3], fail_forward)
                elif where == "backward_hook":
                    guard.register_full_backward_hook(model[3], fail_backward)
                out = model(x)
                if where == "body":
                    raise Boom("body")
                out.sum().backward()
    assert_same_state(before, model)
    assert model[2].training is False and model[0].training is True


def test_guard_on_captum_model_and_errors():
    model = BasicModel_ConvNet_One_Conv().eval()
    before = model_state(model)
    guard = ModelGuard(model)
    with pytest.raises(RuntimeError, match="inside"):
        guard.register_forward_hook(model.conv1, lambda *a: None)
    with guard:
        guard.register_forward_hook(model.conv1, lambda *a: None)
        with pytest.raises(RuntimeError, match="twice"):
            guard.__enter__()
    assert_same_state(before, model)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        ModelGuard("not a model")


def test_eval_mode_false_keeps_training_and_no_warning(recwarn):
    model = _model().train()
    with ModelGuard(model, eval_mode=False):
        assert model.training
    assert model.training
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
