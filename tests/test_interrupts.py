"""The model comes back while the exception is still alive, and under asynchronous interrupts.

- Errors raised by the code that consumes a stream of layer outputs (NaN features, a layer
  whose shape changes between batches): the model is checked inside the ``except`` block and
  while a reference to the traceback is kept (what ``sys.last_traceback`` does in a REPL).
- ``KeyboardInterrupt`` between a hook's registration and the guard's bookkeeping, inside the
  restore loops, and a real SIGINT (``_thread.interrupt_main``) at random times.
- Real timer SIGINTs over many guarded calls (no hook, flag or lock left) and over forward-mode
  calls, and a SIGINT inside torch's bookkeeping of its forward-AD and vmap levels (held back
  until the chunk ends: autograd keeps working).
"""

from __future__ import annotations

import _thread
import random
import signal
import threading
import time

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from captum_concepts._utils.hooks import ModelGuard, model_lock
from captum_concepts.attr import EmbeddingAttribution
from captum_concepts.concept import CoupledNMFConcepts, SemanticVector
from captum_concepts.data import DigitsCNN
from captum_concepts.testing import assert_same_state, count_hooks, model_state

X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0, 1, 2])


def _model() -> DigitsCNN:
    torch.manual_seed(0)
    model = DigitsCNN(width=4, embedding_dim=8)
    model.train()
    model.block1.eval()
    for p in model.block1.parameters():
        p.requires_grad_(False)
    return model


def _usable(model: nn.Module) -> None:
    """A plain forward runs (no leftover capture hook) and autograd is on again."""
    assert torch.is_grad_enabled(), "torch.no_grad() was left on"
    with torch.no_grad():
        assert model(X).shape == (6, 10)


def _shape_changing_batches():
    yield X[:3], Y[:3]
    yield torch.rand(3, 1, 10, 10), Y[3:]  # a different spatial size: the layer shape changes


CONSUMER_ERRORS = {
    "fit_from_labels(NaN)": lambda m: SemanticVector(m, "block3.pool").fit_from_labels(
        (torch.full_like(X, float("nan")), Y)
    ),
    "fit(NaN)": lambda m: SemanticVector(m, "block3.pool").fit({"a": torch.full_like(X, float("nan"))}),
    "fit_from_labels(shape change)": lambda m: SemanticVector(m, "block2.relu").fit_from_labels(
        _shape_changing_batches()
    ),
    "cnmf.fit(shape change)": lambda m: CoupledNMFConcepts(2, m, layers=["block2.relu"]).fit(
        [X[:3], torch.rand(3, 1, 10, 10)]
    ),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", list(CONSUMER_ERRORS))
def test_model_is_restored_while_the_exception_is_alive(case):
    model = _model()
    before = model_state(model)
    kept = None
    try:
        CONSUMER_ERRORS[case](model)
    except ValueError as err:
        assert_same_state(before, model)
        _usable(model)
        kept = err.__traceback__  # as sys.last_traceback keeps it in a REPL
    assert kept is not None, "the error was not raised"
    assert_same_state(before, model)
    _usable(model)


class _Interrupt:
    """Raise KeyboardInterrupt right after the first call of ``owner.name`` (then behave)."""

    def __init__(self, monkeypatch, owner, name):
        self.original = getattr(owner, name)
        self.armed = True
        interrupt = self

        def patched(*args, **kwargs):
            result = interrupt.original(*args, **kwargs)
            if interrupt.armed:
                interrupt.armed = False
                raise KeyboardInterrupt
            return result

        monkeypatch.setattr(owner, name, patched)


@pytest.mark.parametrize(
    "register",
    ["register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook", "capture"],
)
def test_interrupt_between_registration_and_bookkeeping_leaves_no_hook(monkeypatch, register):
    model = _model()
    before = model_state(model)
    name = "register_forward_hook" if register == "capture" else register
    with pytest.raises(KeyboardInterrupt):
        with ModelGuard(model, warn_train_mode=False) as guard:
            _Interrupt(monkeypatch, nn.Module, name)
            if register == "capture":
                guard.capture(model.block2)
            else:
                getattr(guard, register)(model.block2, lambda *a: None)
    assert count_hooks(model) == 0
    assert_same_state(before, model)


def test_interrupt_inside_the_restore_loops_restores_the_rest(monkeypatch):
    model = _model()
    before = model_state(model)
    with pytest.raises(KeyboardInterrupt):
        with ModelGuard(model, freeze_parameters=True, warn_train_mode=False) as guard:
            guard.register_forward_hook(model.block2, lambda *a: None)
            guard.register_forward_hook(model.block3, lambda *a: None)
            _Interrupt(monkeypatch, torch.utils.hooks.RemovableHandle, "remove")
            _Interrupt(monkeypatch, torch.Tensor, "requires_grad_")
            _Interrupt(monkeypatch, nn.Module, "train")
    monkeypatch.undo()
    assert_same_state(before, model)


METHODS = {
    "SemanticVector.fit_from_labels": lambda m: SemanticVector(m, "block3.pool").fit_from_labels((X, Y)),
    "EmbeddingAttribution": lambda m: EmbeddingAttribution(m, "embedding", "block2.relu").attribute(X),
    "CoupledNMFConcepts.fit": lambda m: CoupledNMFConcepts(2, m, layers=["block2.relu"], max_iter=2).fit(X),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", list(METHODS))
def test_ctrl_c_at_random_times(method):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    call = METHODS[method]
    model = _model()
    durations = []
    for _ in range(3):
        start = time.perf_counter()
        call(model)
        durations.append(time.perf_counter() - start)
    duration = min(durations)
    rng = random.Random(0)
    interrupted = 0
    for _ in range(20):
        before = model_state(model)
        timer = threading.Timer(rng.uniform(0, 1.2 * duration), _thread.interrupt_main)
        try:
            timer.start()
            try:
                call(model)
            finally:
                timer.join()
                time.sleep(0.002)  # let a pending interrupt arrive inside this try
        except KeyboardInterrupt:
            interrupted += 1
            assert_same_state(before, model)
            _usable(model)
        assert_same_state(before, model)
    assert interrupted > 0


# ---------------------------------------------------------------------------- timer SIGINTs
def _main_thread_only():
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        pytest.skip("needs the main thread (signals) and signal.setitimer")


@pytest.fixture
def sigint_timer():
    """``arm(delay)``: a SIGINT ``delay`` seconds from now, from a real timer (SIGALRM whose
    handler raises SIGINT, so it is handled wherever the main thread happens to be); ``settle()``
    waits for it and swallows a late ``KeyboardInterrupt``, returning whether one arrived."""
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: signal.raise_signal(signal.SIGINT))

    def arm(delay):
        signal.setitimer(signal.ITIMER_REAL, max(delay, 1e-6))

    def settle():
        arrived = False
        while True:
            try:
                while signal.getitimer(signal.ITIMER_REAL)[0] > 0:
                    pass
                time.sleep(0)  # a pending interrupt is raised here
                return arrived
            except KeyboardInterrupt:
                arrived = True

    try:
        yield arm, settle
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _timed(call, repeat=20):
    durations = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        durations.append(time.perf_counter() - start)
    return sorted(durations)[len(durations) // 2]


def _interrupt_calls(call, n, arm, settle, check, seed=0, repeat=20):
    """``call`` ``n`` times, each with a SIGINT at a random time over 1.3 x its duration;
    ``check()`` after each. Returns how many calls were interrupted."""
    duration = _timed(call, repeat)
    rng = random.Random(seed)
    interrupted = 0
    for _ in range(n):
        try:
            try:
                arm(rng.uniform(0, 1.3 * duration))
                call()
            finally:
                late = settle()
        except KeyboardInterrupt:
            late = True
        interrupted += late
        check()
    return interrupted


def _lock_is_free(model) -> bool:
    """Another thread gets the model's lock (a leaked hold would make its next call wait forever)."""
    got = []

    def take():
        lock = model_lock(model)
        got.append(lock.acquire(timeout=5))
        if got[-1]:
            lock.release()

    t = threading.Thread(target=take)
    t.start()
    t.join()
    return got == [True]


def _autograd_works():
    x = torch.ones(2).requires_grad_()  # fails while a functorch transform is left pushed
    (grad,) = torch.autograd.grad((3 * x).sum(), x)
    assert torch.equal(grad, torch.full((2,), 3.0))
    assert torch._C._functorch.maybe_current_level() is None, "a functorch transform was left pushed"
    assert fwAD._current_level == -1, "a forward-AD level was left open"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_timer_sigints_never_leave_a_guard_half_restored(sigint_timer):
    """SIGINTs from a real timer at random times over 1000 short guarded calls (hooks, frozen
    parameters, eval mode on a mixed model): no call leaves a hook, a flag or the model's lock
    behind. Before the handler stayed installed for the whole block, an interrupt at the start
    of the restore (before the deferral was in place) did, within a few dozen interrupted calls."""
    _main_thread_only()
    arm, settle = sigint_timer
    model = _model()
    before = model_state(model)
    lock = model_lock(model)

    def call():
        with ModelGuard(model, freeze_parameters=True, warn_train_mode=False) as guard:
            guard.register_forward_hook(model.block2, lambda *a: None)
            guard.capture(model.block3)
            guard.forward(model, X[:2])

    def check():
        assert count_hooks(model) == 0
        assert not lock._is_owned(), "the model's lock is still held"
        assert [m.training for m in model.modules()] == list(before["training"].values())
        assert [p.requires_grad for p in model.parameters()] == list(before["requires_grad"].values())

    interrupted = _interrupt_calls(call, 1000, arm, settle, check)
    assert interrupted > 500
    assert_same_state(before, model)
    assert _lock_is_free(model)
    _usable(model)
    _autograd_works()


# ---------------------------------------------------------------------------- forward mode
@pytest.fixture
def clean_transforms():
    """Leave torch's forward-AD and functorch state clean after the test even if it broke them
    (so that a failure here does not break every later test)."""
    yield
    from torch._functorch import eager_transforms

    if torch._C._functorch.maybe_current_level() is not None:
        torch._C._functorch.pop_dynamic_layer_stack_and_undo_to_depth(0)
    fwAD._current_level = -1
    eager_transforms.JVP_NESTING = 0
    try:
        torch._C._exit_dual_level(level=0)
    except RuntimeError:
        pass  # no level open: the usual case


def _sigint_inside(monkeypatch, module, name, before):
    """The first call of ``module.name`` gets a real SIGINT (``_thread.interrupt_main``) right
    before (``before``) or right after its C++ work, i.e. between torch's C++ and Python
    bookkeeping of a transform level."""
    original = getattr(module, name)
    armed = [True]

    def patched(*args, **kwargs):
        if before and armed[0]:
            armed[0] = False
            _thread.interrupt_main()
        result = original(*args, **kwargs)
        if armed[0]:
            armed[0] = False
            _thread.interrupt_main()
        return result

    monkeypatch.setattr(module, name, patched)


INSIDE_TORCH = {
    # torch entered the dual level in C++, Python's _current_level is not yet updated: every
    # later forward-mode call used to fail ("the current level is not valid"), blamed on the model
    "forward-AD level entered": ("torch._functorch.predispatch", "_enter_dual_level", False),
    # vmap's level about to be popped: functorch's stack used to stay pushed, every later
    # requires_grad_() failed
    "vmap level popped": ("torch._functorch.vmap", "_vmap_decrement_nesting", True),
}


@pytest.mark.parametrize("where", list(INSIDE_TORCH))
def test_sigint_inside_torchs_transform_bookkeeping_waits_for_the_chunk(monkeypatch, clean_transforms, where):
    _main_thread_only()
    import importlib

    torch.manual_seed(0)
    model = DigitsCNN(width=4, embedding_dim=32).eval()
    ea = EmbeddingAttribution(model, "embedding", "block3.relu", strategy="forward")
    reference = ea.attribute(X)
    assert reference.abs().sum() > 0
    before = model_state(model)
    module, name, first = INSIDE_TORCH[where]
    _sigint_inside(monkeypatch, importlib.import_module(module), name, first)
    with pytest.raises(KeyboardInterrupt):
        ea.attribute(X)
        time.sleep(0)  # (a call that ends before the interrupt is handled)
    monkeypatch.undo()
    _autograd_works()
    assert_same_state(before, model)
    auto = EmbeddingAttribution(model, "embedding", "block3.relu")
    torch.testing.assert_close(auto.attribute(X), reference, rtol=1e-5, atol=1e-7)
    assert auto.strategy_ == "forward"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_timer_sigints_over_forward_mode_calls_leave_autograd_working(sigint_timer, clean_transforms):
    """Random timer SIGINTs over 50 forward-mode calls: the model, torch's forward-AD level and
    functorch's transform stack all come back, and forward mode still gives the maps."""
    _main_thread_only()
    arm, settle = sigint_timer
    torch.manual_seed(0)
    model = DigitsCNN(width=4, embedding_dim=32).eval()
    ea = EmbeddingAttribution(model, "embedding", "block3.relu", strategy="forward")
    reference = ea.attribute(X[:2])
    before = model_state(model)

    def check():
        assert count_hooks(model) == 0
        assert torch._C._functorch.maybe_current_level() is None
        assert fwAD._current_level == -1

    interrupted = _interrupt_calls(lambda: ea.attribute(X[:2]), 50, arm, settle, check, seed=1, repeat=5)
    assert interrupted > 25
    assert_same_state(before, model)
    assert _lock_is_free(model)
    _autograd_works()
    torch.testing.assert_close(ea.attribute(X[:2]), reference, rtol=1e-5, atol=1e-7)
