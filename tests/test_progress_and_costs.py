"""Long work announces itself (issue 27.3): progress bars on by default (on a terminal only), and a
one-line warning before a plan of more than ``MANY_PASSES`` gradient passes, naming cheaper choices."""

from __future__ import annotations

import io
import sys
import warnings

import pytest
import torch
from torch import nn

from captum_concepts.attr import EmbeddingAttribution
from captum_concepts.attr._core.costs import MANY_PASSES, gradient_passes
from captum_concepts.concept import SemanticVector


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal: tqdm's ``disable=None`` then shows the bar."""

    def isatty(self) -> bool:
        return True


def _on_terminal(monkeypatch) -> _Terminal:
    """Patched in the test body: pytest's capture swaps ``sys.stderr`` back after fixtures run."""
    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def _mlp(d: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Softplus(), nn.Linear(8, d)).eval()


@pytest.mark.parametrize("strategy", ["loop", "forward"])
def test_attribute_shows_progress_by_default_on_a_terminal(monkeypatch, strategy):
    """Reverse and forward mode both draw a bar without being asked; ``show_progress=False``
    silences it; the maps are the same either way."""
    terminal = _on_terminal(monkeypatch)
    ea = EmbeddingAttribution(_mlp(5), layer="1", embedding_aggregator="var", strategy=strategy)
    x = torch.randn(3, 6)
    shown = ea.attribute(x)
    bar = "forward mode" if strategy == "forward" else "EmbeddingAttribution (reverse)"
    assert bar in terminal.getvalue()
    terminal.seek(0)
    terminal.truncate()
    quiet = ea.attribute(x, show_progress=False)
    assert terminal.getvalue() == ""
    torch.testing.assert_close(shown, quiet)


def test_no_progress_off_a_terminal(capsys):
    ea = EmbeddingAttribution(_mlp(5), layer="1", embedding_aggregator="var", strategy="loop")
    ea.attribute(torch.randn(3, 6))
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_semantic_vector_fits_show_progress(monkeypatch):
    terminal = _on_terminal(monkeypatch)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x, y = torch.randn(10, 6), torch.arange(10) % 2
    SemanticVector(model, "1", batch_size=4).fit_from_labels((x, y))
    assert "SemanticVector" in terminal.getvalue()
    terminal.seek(0)
    terminal.truncate()
    SemanticVector(model, "1", batch_size=4).fit({"a": x[:5], "b": x[5:]}, show_progress=False)
    SemanticVector(model, "1", batch_size=4).fit_from_labels((x, y), show_progress=False)
    assert terminal.getvalue() == ""


def test_many_passes_warn_once_with_the_cheaper_choices():
    """``var`` over D > MANY_PASSES dimensions runs one backward pass per dimension: one warning,
    before the work, naming embedding_dims=, the mean aggregators and fewer layers."""
    d = MANY_PASSES + 1
    model = _mlp(d)
    x = torch.randn(2, 6)
    ea = EmbeddingAttribution(model, layer="1", embedding_aggregator="var", strategy="loop")
    with pytest.warns(UserWarning, match=r"embedding_aggregator='var'") as record:
        ea.attribute(x, show_progress=False)
    costly = [w for w in record if "gradient passes" in str(w.message)]
    assert len(costly) == 1
    text = str(costly[0].message)
    assert f"{d} gradient passes" in text and "\n" not in text
    assert "embedding_dims=" in text and "embedding_aggregator='mean'" in text and "fewer layers" in text
    assert costly[0].filename == __file__  # points at the user's line
    assert gradient_passes([ea.plan_], d) == d


@pytest.mark.parametrize(
    "kwargs, call",
    [
        ({"embedding_aggregator": "var"}, {"embedding_dims": list(range(10))}),  # few dimensions
        ({"embedding_aggregator": "mean"}, {}),  # linear: one backward pass
        ({"embedding_aggregator": "var"}, {}),
    ],
)
def test_cheap_plans_do_not_warn(kwargs, call):
    d = MANY_PASSES + 1 if kwargs["embedding_aggregator"] == "mean" or call else 20
    ea = EmbeddingAttribution(_mlp(d), layer="1", strategy="loop", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ea.attribute(torch.randn(2, 6), show_progress=False, **call)


def test_channel_aggregator_named_when_it_is_the_cause():
    d = MANY_PASSES + 1
    ea = EmbeddingAttribution(
        _mlp(d), layer="1", channel_aggregator="abs", embedding_aggregator="mean", strategy="loop"
    )
    with pytest.warns(UserWarning, match=r"channel_aggregator='abs' is not linear"):
        ea.attribute(torch.randn(2, 6), show_progress=False)


def test_a_hidden_bar_never_takes_tqdms_process_wide_lock():
    """Every tqdm bar, shown or not, takes tqdm's write lock; a Ctrl-C between its acquire and release
    (the timer SIGINTs of test_interrupts hit it) left it held and deadlocked every later call of
    the process that made a bar, in any thread. A bar that is not shown must not touch tqdm."""
    import threading

    from tqdm import tqdm

    from captum_concepts._utils.progress import progress_bar

    lock = tqdm.get_lock()
    lock.acquire()  # as an interrupted bar of another call leaves it
    try:
        done = threading.Event()

        def run() -> None:
            for _ in progress_bar(range(3), show=False):
                pass
            with progress_bar(total=2) as bar:  # not a terminal here: hidden as well
                bar.update(2)
            done.set()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        assert done.wait(10), "a hidden progress bar waited for tqdm's lock"
    finally:
        lock.release()
