"""The documentation's code runs: every Python block of the quick start, in order."""

import re
from pathlib import Path
from types import SimpleNamespace

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(page: Path) -> list:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)


def test_quickstart_page_has_code():
    assert len(_python_blocks(DOCS / "quickstart.md")) >= 4


def test_quickstart_code_runs_in_order(digits_cnn, monkeypatch):
    import captum_concepts.data

    # the page trains the digits CNN; the session's trained copy saves that half minute
    trained = SimpleNamespace(model=digits_cnn)
    monkeypatch.setattr(captum_concepts.data, "train_digits_cnn", lambda data, **kwargs: trained)
    namespace: dict = {}
    for block in _python_blocks(DOCS / "quickstart.md"):
        exec(compile(block, "quickstart.md", "exec"), namespace)
    assert tuple(namespace["maps"].shape) == (16, 8, 8)
    assert namespace["maps"].abs().sum() > 0
    assert tuple(namespace["vs"].shape) == (16,) and float(namespace["vs"].max()) <= 0.25
    assert len(namespace["concepts"]) == 10
