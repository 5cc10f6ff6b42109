"""Build the tutorial notebooks from their sources, or check that they are in sync.

Every ``tutorials/NN_name.py`` (two digits, then a name) is a notebook written in jupytext's
percent format: ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell. It is the
only file to edit; ``NN_name.ipynb`` is generated from it, executed, and committed with its
outputs so that the figures show on the repository page and in the documentation.

Usage (from the repository root)::

    python tutorials/build.py                 # execute every source into its notebook
    python tutorials/build.py 05_my_model.py  # only the named sources
    python tutorials/build.py --check         # fail if a notebook is stale, missing or not executed

``--check`` executes nothing: it compares the cells (type and text) of each source with those
of its committed notebook, checks that every code cell of the notebook ran without error, and
that the notebook stays small. CI runs it; the test command executes the notebooks themselves.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent
SOURCE_GLOB = "[0-9][0-9]_*.py"
MAX_NOTEBOOK_BYTES = 2_000_000
CELL_TIMEOUT_S = 900  # per cell; also read by nbmake from the notebook's metadata
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def sources(folder: Path = HERE) -> list[Path]:
    """The tutorial sources in ``folder``, in their numbered order."""
    return sorted(folder.glob(SOURCE_GLOB))


def notebook_path(source: Path) -> Path:
    return source.with_suffix(".ipynb")


def read_source(source: Path) -> nbformat.NotebookNode:
    """The notebook a source describes, without outputs, with stable cell ids and metadata."""
    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata = nbformat.from_dict(
        {
            "kernelspec": KERNELSPEC,
            "language_info": {"name": "python"},
            "execution": {"timeout": CELL_TIMEOUT_S},
        }
    )
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{source.stem[:2]}-{i:02d}"
        tags = list(cell.metadata.get("tags", []))
        cell.metadata = nbformat.from_dict({"tags": tags} if tags else {})
    return nb


def cell_texts(nb: nbformat.NotebookNode) -> list[tuple[str, str, tuple]]:
    """What must agree between a source and its notebook: each cell's type, text and tags
    (``# %% tags=["remove-cell"]`` in a source: a cell the documentation site does not show)."""
    return [(cell.cell_type, cell.source.strip(), tuple(cell.metadata.get("tags", []))) for cell in nb.cells]


LOCAL_PATH = re.compile(r"(/(root|home|Users|usr|opt|tmp)/|[A-Za-z]:\\|site-packages)")


def local_paths_in_stderr(nb: nbformat.NotebookNode) -> list[int]:
    """Code cells whose stderr output names a file on the machine that ran them (a warning's
    ``/home/.../site-packages/x.py:63: UserWarning``): filter or avoid such warnings."""
    return [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        and any(
            out.get("output_type") == "stream"
            and out.get("name") == "stderr"
            and LOCAL_PATH.search(out.get("text", ""))
            for out in cell.get("outputs", [])
        )
    ]


def execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    """Run every cell of ``nb`` in a fresh Python kernel started in ``cwd``; raise on an error."""
    from nbclient import NotebookClient

    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=300,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    return client.execute()


def write_atomically(nb: nbformat.NotebookNode, path: Path) -> None:
    nbformat.validate(nb)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".ipynb")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a notebook is not
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            nbformat.write(nb, handle)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def build(source: Path) -> Path:
    """Execute ``source`` into its notebook (written only when every cell ran)."""
    nb = execute(read_source(source), cwd=source.parent)
    target = notebook_path(source)
    write_atomically(nb, target)
    return target


def problems(source: Path) -> list[str]:
    """Why the committed notebook of ``source`` is out of date; empty when it is in sync."""
    target = notebook_path(source)
    if not target.exists():
        return [f"{target.name} is missing"]
    nb = nbformat.read(target, as_version=4)
    found = []
    expected, committed = cell_texts(read_source(source)), cell_texts(nb)
    if expected != committed:
        index = next(
            (i for i, (a, b) in enumerate(zip(expected, committed)) if a != b),
            min(len(expected), len(committed)),
        )
        found.append(
            f"{target.name} differs from {source.name} from cell {index} on "
            f"({len(expected)} cells in the source, {len(committed)} in the notebook)"
        )
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("execution_count") is None:
            found.append(f"{target.name}: cell {i} was not executed")
            break
        if any(output.get("output_type") == "error" for output in cell.get("outputs", [])):
            found.append(f"{target.name}: cell {i} has an error output")
    for i in local_paths_in_stderr(nb):
        found.append(f"{target.name}: cell {i} prints a warning with a local file path on stderr")
    size = target.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        found.append(f"{target.name} is {size / 1e6:.1f} MB (limit {MAX_NOTEBOOK_BYTES / 1e6:.0f} MB)")
    return found


def orphans(folder: Path = HERE) -> list[str]:
    """Numbered notebooks without a source (a renamed or deleted tutorial)."""
    known = {notebook_path(source) for source in sources(folder)}
    return [
        f"{nb.name} has no source {nb.with_suffix('.py').name}"
        for nb in sorted(folder.glob("[0-9][0-9]_*.ipynb"))
        if nb not in known
    ]


def check(folder: Path = HERE) -> list[str]:
    """Every problem of every tutorial in ``folder``; empty when all notebooks are in sync."""
    found = orphans(folder)
    for source in sources(folder):
        found.extend(problems(source))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", help="sources to build (default: every NN_*.py here)")
    parser.add_argument("--check", action="store_true", help="check that the notebooks are in sync")
    args = parser.parse_args(argv)
    chosen = [HERE / Path(name).name for name in args.sources] or sources(HERE)
    missing = [path.name for path in chosen if not path.is_file()]
    if missing:
        parser.error(f"no such tutorial source: {', '.join(missing)}")
    if args.check:
        found = check(HERE) if not args.sources else [p for s in chosen for p in problems(s)]
        for problem in found:
            print(f"out of sync: {problem}", file=sys.stderr)
        if found:
            print("rebuild with: python tutorials/build.py", file=sys.stderr)
            return 1
        print(f"{len(chosen)} tutorial notebooks in sync with their sources")
        return 0
    for source in chosen:
        print(f"executing {source.name} ...", flush=True)
        print(f"  wrote {build(source).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
