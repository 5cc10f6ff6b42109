"""tutorials/build.py --check: committed notebooks must match their jupytext sources."""

import importlib.util
import shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"


def _load_build():
    spec = importlib.util.spec_from_file_location("tutorials_build", TUTORIALS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()


@pytest.fixture
def one_tutorial(tmp_path):
    """A copy of the first tutorial (source and executed notebook) in a folder of its own."""
    source = build.sources(TUTORIALS)[0]
    shutil.copy(source, tmp_path / source.name)
    shutil.copy(build.notebook_path(source), tmp_path / build.notebook_path(source).name)
    return tmp_path / source.name


def test_every_numbered_source_has_a_notebook_in_sync():
    assert len(build.sources(TUTORIALS)) >= 4
    assert build.check(TUTORIALS) == []


def test_committed_notebooks_hold_their_figures():
    for source in build.sources(TUTORIALS):
        nb = nbformat.read(build.notebook_path(source), as_version=4)
        outputs = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
        images = [output for output in outputs if "image/png" in output.get("data", {})]
        assert images, f"{source.stem}.ipynb shows no figure"


def test_check_passes_on_an_untouched_copy(one_tutorial):
    assert build.check(one_tutorial.parent) == []


def test_check_fails_when_the_source_changes_and_the_notebook_does_not(one_tutorial):
    text = one_tutorial.read_text()
    one_tutorial.write_text(text.replace("torch.manual_seed(0)", "torch.manual_seed(1)", 1))
    found = build.check(one_tutorial.parent)
    assert len(found) == 1 and "differs from" in found[0] and "cell 1" in found[0], found


def test_check_fails_when_a_cell_is_added_to_the_source(one_tutorial):
    one_tutorial.write_text(one_tutorial.read_text() + "\n# %%\nprint('new cell')\n")
    found = build.check(one_tutorial.parent)
    assert any("differs from" in problem for problem in found), found


def test_check_fails_on_a_new_source_without_notebook_and_on_an_orphan_notebook(one_tutorial):
    folder = one_tutorial.parent
    shutil.copy(one_tutorial, folder / "07_new_tutorial.py")
    build.notebook_path(one_tutorial).rename(folder / "09_renamed.ipynb")
    found = build.check(folder)
    assert f"{one_tutorial.stem}.ipynb is missing" in found
    assert "07_new_tutorial.ipynb is missing" in found
    assert any(problem.startswith("09_renamed.ipynb has no source") for problem in found), found


def test_check_fails_on_a_notebook_that_was_not_executed(one_tutorial):
    nbformat.write(build.read_source(one_tutorial), build.notebook_path(one_tutorial))
    found = build.check(one_tutorial.parent)
    assert found == [f"{one_tutorial.stem}.ipynb: cell 1 was not executed"], found


def test_main_check_exit_status(one_tutorial, monkeypatch, capsys):
    monkeypatch.setattr(build, "HERE", one_tutorial.parent)
    assert build.main(["--check"]) == 0
    one_tutorial.write_text(one_tutorial.read_text().replace("# %% [markdown]", "# %%", 1))
    assert build.main(["--check"]) == 1
    assert "out of sync" in capsys.readouterr().err


def test_check_fails_on_a_warning_with_a_local_path_on_stderr(one_tutorial):
    path = build.notebook_path(one_tutorial)
    nb = nbformat.read(path, as_version=4)
    first = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code")
    warning = "/home/me/.venv/lib/python3.11/site-packages/captum/x.py:63: UserWarning: something\n"
    nb.cells[first].outputs.append(nbformat.v4.new_output("stream", name="stderr", text=warning))
    nbformat.write(nb, path)
    found = build.check(one_tutorial.parent)
    assert found == [f"{path.name}: cell {first} prints a warning with a local file path on stderr"], found


def test_cell_tags_of_the_source_reach_the_notebook(one_tutorial):
    text = one_tutorial.read_text()
    assert "\n# %%\n" in text  # a plain code cell to tag
    one_tutorial.write_text(text.replace("\n# %%\n", '\n# %% tags=["remove-cell"]\n', 1))
    nb = build.read_source(one_tutorial)
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert first.metadata.get("tags") == ["remove-cell"]
    found = build.check(one_tutorial.parent)  # the committed notebook lacks the tag
    assert any("differs from" in problem for problem in found), found
