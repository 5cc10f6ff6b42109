"""One context manager for every hook and temporary model change we make.

Every class in captum_concepts that touches a model goes through
:class:`ModelGuard`. On exit -- normal or by exception -- it removes every hook
it registered, restores each module's train/eval flag, each parameter's
``requires_grad`` flag and every attribute it was asked to change (for example
``ReLU.inplace``). This is the Zennit pattern (a composite used as a context
manager) applied to Captum-style attribution code.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
import weakref
from types import CodeType
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .capture import LayerCapture, forward_once
from .warn import warn_user

__all__ = ["ModelGuard", "model_lock", "run_uninterrupted"]

_MISSING = object()
_MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_MODULE_EXTRA_DICTS = (
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)

_locks: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_locks_lock = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises captum_concepts' calls on ``model``."""
    with _locks_lock:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock


# ---------------------------------------------------------------------- Ctrl-C
# Python runs signal handlers in the main thread only, between bytecodes. A handler installed for
# a whole guarded block (not just around the restore) makes the unguarded window empty: it looks
# at the frame the interrupt landed in and holds SIGINT back while any frame of the main thread's
# stack runs code marked with _uninterruptible (the guard's entry and exit, the restore, forward
# mode's transforms); elsewhere (the user's code in the block) it passes the signal on at once.
_HELD_BACK: Set[CodeType] = set()


def _uninterruptible(fn: Callable) -> Callable:
    """Mark ``fn``: a SIGINT arriving while it runs is held back (see :func:`_hold`)."""
    _HELD_BACK.add(fn.__code__)
    return fn


class _Sigint:
    """The main thread's SIGINT state: the handler we replaced, how many holds are open and the
    signals held back. Only the main thread changes it (only it can install handlers)."""

    depth = 0
    previous: Any = None
    pending = 0


def _held_back(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code in _HELD_BACK:
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum: int, frame: Any) -> None:
    if _held_back(frame):
        _Sigint.pending += 1
        return
    _pass_on(_Sigint.previous, frame)


def _pass_on(handler: Any, frame: Any) -> None:
    """Do what ``handler`` (the one we replaced) does with a SIGINT (the default raises
    ``KeyboardInterrupt``)."""
    if handler is None or handler is _on_sigint:
        handler = signal.default_int_handler
    if callable(handler):
        handler(signal.SIGINT, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.raise_signal(signal.SIGINT)


@_uninterruptible
def _hold() -> bool:
    """Start holding SIGINT back in the calling (marked) function; returns whether a hold was
    opened (the main thread, with a handler installed from Python), to pass to :func:`_release`.

    Nothing changes before the handler is installed: an interrupt arriving earlier is raised
    here with no state taken."""
    if threading.get_ident() != threading.main_thread().ident:
        return False
    if _Sigint.depth == 0:
        try:
            current = signal.getsignal(signal.SIGINT)
            if current is None or current == signal.SIG_IGN:
                return False  # a handler set outside Python, or ignored: nothing to hold back
            if current is not _on_sigint:  # else left installed by a hold closed in another thread
                signal.signal(signal.SIGINT, _on_sigint)  # delivers earlier signals first
                _Sigint.previous = current
        except (ValueError, OSError, TypeError):  # no signal support (embedded interpreters)
            return False
        _Sigint.pending = 0
    _Sigint.depth += 1
    return True


@_uninterruptible
def _release(held: bool) -> None:
    """Close a hold of :func:`_hold`, called by the marked function that opened it; a SIGINT
    held back is delivered now (``KeyboardInterrupt`` with the default handler) unless an outer
    marked function is still running (it delivers it when it returns)."""
    if not held:
        return
    _Sigint.depth -= 1
    previous = _Sigint.previous
    if _Sigint.depth == 0:
        try:
            if signal.getsignal(signal.SIGINT) is _on_sigint:  # not replaced by the user meanwhile
                signal.signal(signal.SIGINT, previous)
            _Sigint.previous = None
        except (ValueError, OSError, TypeError):  # another thread: the handler stays, passing on
            pass
    elif _held_back(sys._getframe(2)):
        return
    if _Sigint.pending:
        _Sigint.pending = 0
        _pass_on(previous, sys._getframe(1))


@_uninterruptible
def _deliver_pending() -> None:
    """Deliver a SIGINT held back so far (from a marked function that is about to wait)."""
    if _Sigint.pending and _Sigint.depth:
        _Sigint.pending = 0
        _pass_on(_Sigint.previous, sys._getframe(1))


@_uninterruptible
def run_uninterrupted(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with Ctrl-C (SIGINT) held back until it returns, then delivered.

    For sections that must not be cut half-way (torch's forward-AD and functorch transform
    stacks are process- and thread-global state: an interrupt between their push and pop leaves
    them broken for the rest of the process). Acts in the main thread, where Python runs signal
    handlers; elsewhere it just calls ``fn``."""
    held = _hold()
    try:
        return fn(*args, **kwargs)
    finally:
        _release(held)


@_uninterruptible
def acquire(lock: Any) -> None:
    """``lock.acquire()`` from a marked function: a Ctrl-C while waiting for another thread
    raises ``KeyboardInterrupt`` (the caller then holds nothing of ``lock``)."""
    while not lock.acquire(timeout=0.05):
        _deliver_pending()


class _Hook:
    """A hook we register: recorded *before* registration so that it can always be removed."""

    __slots__ = ("target", "fn", "handle", "dicts", "extras")

    def __init__(self, target: Any, fn: Callable, dicts: Sequence[str], extras: Sequence[str] = ()) -> None:
        self.target = target
        self.fn = fn
        self.handle: Optional[RemovableHandle] = None
        self.dicts = dicts
        self.extras = extras

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            return
        # interrupted between registration and bookkeeping: find our function by identity
        for name in self.dicts:
            hooks = getattr(self.target, name, None) or {}
            for key in [k for k, v in hooks.items() if v is self.fn]:
                del hooks[key]
                for extra in self.extras:
                    getattr(self.target, extra, {}).pop(key, None)


class ModelGuard:
    """Register hooks and temporary changes on ``model``; undo all of them on exit.

    Args:
        model (nn.Module): the model to guard.
        eval_mode (bool, optional): if True (default) the whole model runs in eval
            mode inside the block, so dropout and batch-norm statistics do not
            change explanations; the original per-module flags come back on exit.
            A model that was in training mode triggers a ``UserWarning`` once per
            guard, because its explanations would otherwise differ from a plain
            ``model(x)`` call in training mode. Pass ``eval_mode=False`` to keep
            the model's mode untouched.
        freeze_parameters (bool, optional): if True, parameters get
            ``requires_grad=False`` inside the block (gradients w.r.t. inputs or
            activations need no parameter gradients, and none are accumulated
            into ``.grad``). Default: False.
        warn_train_mode (bool, optional): emit the training-mode warning. Default: True.

    Restoring. Train/eval flags come back through ``module.train(flag)`` (so a
    module whose ``train()`` has side effects is replayed), parents before
    children so that mixed states are reproduced; a flag that still differs is
    then assigned. Every step of the restore runs even if an earlier one raised;
    the first error is re-raised afterwards. Each hook is recorded before it is
    registered, and Ctrl-C (SIGINT) is held back while the model is changed or
    restored and delivered right after, so an interrupt never leaves a hook, a
    half-restored model or the model's lock behind. The handler that holds it
    back is installed at the start of entering and stays until the end of
    leaving (inside the block it passes an interrupt on at once): no interrupt
    can land between the block's end and the start of the restore.

    Threads. Our calls on one model are serialised by a per-model re-entrant lock
    (:func:`model_lock`), held from entering to leaving the block: concurrent
    calls from several threads give the same results as sequential calls, and
    the model is restored by the last of them to what it was before the first.
    Nested guards on the same model in the same thread are allowed. Forward
    hooks and forward pre-hooks registered through the guard act only in the
    thread that entered it (captures only inside :meth:`forward`): a plain
    ``model(x)`` from another thread during our call runs without our hooks,
    but on the model as the guard has set it (eval mode, frozen parameters), and
    never sees an internal exception. Backward hooks are not filtered by thread
    (autograd may run them on its own threads). ``nn.DataParallel`` runs its
    replicas in worker threads and is not supported; use
    ``DistributedDataParallel`` or the underlying module.

    Example::

        with ModelGuard(model) as guard:
            emb = guard.capture(model.layer1)
            guard.forward(model, x)
            emb.tensor()   # layer1's output, exactly once, safe from later in-place ops
        # here: no hooks left, modes and flags as before, even after an exception
    """

    def __init__(
        self,
        model: nn.Module,
        eval_mode: bool = True,
        freeze_parameters: bool = False,
        warn_train_mode: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.eval_mode = eval_mode
        self.freeze_parameters = freeze_parameters
        self.warn_train_mode = warn_train_mode
        self._hooks: List[_Hook] = []
        self._captures: List[LayerCapture] = []
        self._training: List[Tuple[nn.Module, bool]] = []
        self._requires_grad: Dict[torch.nn.Parameter, bool] = {}
        self._attributes: List[Tuple[Any, str, Any]] = []
        self._active = False
        self._lock: Optional[threading.RLock] = None
        self._owner: Optional[int] = None
        self._held = False

    # ------------------------------------------------------------------ entry/exit
    @_uninterruptible
    def __enter__(self) -> ModelGuard:
        if self._active:
            raise RuntimeError("a ModelGuard cannot be entered twice")
        # held from here to the end of __exit__ (the block itself passes Ctrl-C on at once)
        held = _hold()
        try:
            lock = model_lock(self.model)
            acquire(lock)  # Ctrl-C while another thread's call runs: nothing is held yet
            self._lock = lock
            self._active = True
            self._owner = threading.get_ident()
            self._training = [(m, m.training) for m in self.model.modules()]
            self._requires_grad = {p: p.requires_grad for p in self.model.parameters()}
            if self.eval_mode and any(flag for _, flag in self._training):
                if self.warn_train_mode and self.model.training:
                    warn_user(
                        "model is in training mode; captum_concepts computes explanations "
                        "in eval mode and restores training mode afterwards "
                        "(pass eval_mode=False to keep the mode as it is)"
                    )
                self.model.eval()
            if self.freeze_parameters:
                for p in self._requires_grad:
                    p.requires_grad_(False)
        except BaseException:
            try:
                if self._active or self._lock is not None:
                    self._restore()
            finally:
                _release(held)
            raise
        self._held = held
        return self

    @_uninterruptible
    def __exit__(self, exc_type, exc, tb) -> None:
        held, self._held = self._held, False
        try:
            self._restore()
        finally:
            _release(held)  # a Ctrl-C held back during the restore arrives here

    @_uninterruptible
    def _restore(self) -> None:
        errors: List[BaseException] = []
        try:
            while self._hooks:
                hook = self._hooks.pop()
                try:
                    hook.remove()
                except BaseException as err:  # keep restoring the rest
                    errors.append(err)
            self._captures = []
            while self._attributes:
                obj, name, old = self._attributes.pop()
                try:
                    if old is _MISSING:
                        delattr(obj, name)
                    else:
                        setattr(obj, name, old)
                except BaseException as err:
                    errors.append(err)
            self._restore_modes(errors)
            for _attempt in range(2):  # a second chance for a flag whose restore was interrupted
                for param, flag in self._requires_grad.items():
                    if param.requires_grad != flag:
                        try:
                            param.requires_grad_(flag)
                        except BaseException as err:
                            errors.append(err)
            self._training = []
            self._requires_grad = {}
        finally:
            self._active = False
            self._owner = None
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.release()
        if errors:
            raise errors[0]

    def _restore_modes(self, errors: List[BaseException]) -> None:
        """Replay ``train(flag)`` top-down; assign whatever a custom ``train()`` left different."""
        if all(m.training == flag for m, flag in self._training):
            return
        for module, flag in self._training:  # model.modules() order: parents before children
            if module.training != flag:
                try:
                    module.train(flag)
                except BaseException as err:
                    errors.append(err)
        for module, flag in self._training:
            if module.training != flag:
                module.training = flag

    # ------------------------------------------------------------------ registration
    def _check_active(self) -> None:
        if not self._active:
            raise RuntimeError("register hooks inside the 'with ModelGuard(...)' block")

    def _owned(self, hook: Callable) -> Callable:
        owner = self._owner

        @functools.wraps(hook)
        def call(*args, **kwargs):
            if threading.get_ident() != owner:
                return None
            return hook(*args, **kwargs)

        return call

    def _register(self, record: _Hook, register: Callable, **kwargs) -> RemovableHandle:
        self._hooks.append(record)  # before registering: an interrupt in between cannot lose it
        record.handle = register(record.fn, **kwargs)
        return record.handle

    def register_forward_hook(self, module: nn.Module, hook: Callable, **kwargs) -> RemovableHandle:
        """``module.register_forward_hook(hook, **kwargs)``, removed on exit; acts in this thread only."""
        self._check_active()
        record = _Hook(module, self._owned(hook), _MODULE_HOOK_DICTS, _MODULE_EXTRA_DICTS)
        return self._register(record, module.register_forward_hook, **kwargs)

    def register_forward_pre_hook(self, module: nn.Module, hook: Callable, **kwargs) -> RemovableHandle:
        """``module.register_forward_pre_hook(hook, **kwargs)``, removed on exit; acts in this thread only."""
        self._check_active()
        record = _Hook(module, self._owned(hook), _MODULE_HOOK_DICTS, _MODULE_EXTRA_DICTS)
        return self._register(record, module.register_forward_pre_hook, **kwargs)

    def register_full_backward_hook(self, module: nn.Module, hook: Callable, **kwargs) -> RemovableHandle:
        """``module.register_full_backward_hook(hook, **kwargs)``, removed on exit."""
        self._check_active()
        record = _Hook(module, hook, _MODULE_HOOK_DICTS, _MODULE_EXTRA_DICTS)
        return self._register(record, module.register_full_backward_hook, **kwargs)

    def set_attribute(self, obj: Any, name: str, value: Any) -> None:
        """Set ``obj.name = value`` for the duration of the block (e.g. ``ReLU.inplace``)."""
        self._check_active()
        self._attributes.append((obj, name, getattr(obj, name, _MISSING)))
        setattr(obj, name, value)

    # ------------------------------------------------------------------ capture
    def capture(
        self,
        module: nn.Module,
        argument: str = "layer",
        of: str = "output",
        stop: bool = False,
        leaf: bool = False,
    ) -> LayerCapture:
        """Record ``module``'s output (``of="input"``: its positional inputs) in :meth:`forward`.

        Args:
            module: a module of the model.
            argument: the argument name used in error messages (``"layers[1]"``).
            of: ``"output"`` (forward hook) or ``"input"`` (forward pre-hook).
            stop: end the forward pass as soon as the module has run (the rest of
                the model is not needed); the first call is the one recorded.
            leaf: with autograd enabled, a recorded tensor that does not require
                grad becomes a leaf that does (so gradients w.r.t. it exist).

        Returns:
            :class:`~captum_concepts._utils.capture.LayerCapture`: after
            :meth:`forward`, ``.tensor()`` / ``.tensors()`` give the value and
            raise ``ValueError`` unless the module ran exactly once.
        """
        self._check_active()
        capture = LayerCapture(self, module, argument, of=of, stop=stop, leaf=leaf)
        self._captures.append(capture)
        if of == "input":
            self.register_forward_pre_hook(module, capture.forward_pre_hook)
        else:
            self.register_forward_hook(module, capture.forward_hook)
        return capture

    def replace(self, module: nn.Module, fn: Callable[[Any], Any], of: str = "output") -> RemovableHandle:
        """Hand the rest of the model ``fn(value)`` instead of ``module``'s output, in every pass.

        The one mechanism for output replacement (forward-mode tangents, perturbations of a
        layer, rebuilt activations); removed on exit like every hook of the guard.

        Args:
            module: a module of the model.
            fn: called with the module's output (``of="input"``: the tuple of its positional
                inputs); its result replaces that value, None keeps it as it is.
            of: ``"output"`` (default) or ``"input"``.

        Returns:
            The handle (removing it ends the replacement early).
        """
        if of not in ("output", "input"):
            raise ValueError(f"of must be 'output' or 'input', got {of!r}")
        if of == "input":
            return self.register_forward_pre_hook(module, lambda _module, args: fn(tuple(args)))
        return self.register_forward_hook(module, lambda _module, _args, out: fn(out))

    def forward(self, fn: Callable, *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)`` (usually the model) with this guard's captures recording.

        Returns ``fn``'s result, or None when a ``stop=True`` capture ended the pass early.
        """
        self._check_active()
        return forward_once(self, self._captures, fn, *args, **kwargs)
