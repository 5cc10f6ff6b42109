"""Which model output each class folder is, and whether the model agrees.

``--classes`` names the model's outputs in order; folders are matched to them by name (exactly,
then ignoring case, spaces, ``_`` and ``-``) or by a numeric prefix (``0_T-shirt`` is output 0).
Without ``--classes``, folders that all carry distinct numeric prefixes within the output width
map by the number, other folders by their sorted order. The model's top-1 accuracy under the
mapping is then compared with chance and with the best relabelling of folders to outputs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ._errors import CLIError

_NUMBERED = re.compile(r"^(\d+)(?:[ _.\-]+(.*))?$")
FAR_BELOW = 0.15  # accuracy this far under the best relabelling: the folders probably do not match


def parse_classes(value: Optional[str]) -> Optional[List[str]]:
    """``--classes``: a text file with one name per line, or names separated by commas."""
    if value is None:
        return None
    if os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise CLIError(f"cannot read --classes file {value!r}: {err}") from None
        where = f"file {value!r}"
    elif value.endswith(".txt") or os.sep in value:
        raise CLIError(f"--classes file {value!r} does not exist (or give the names separated by commas)")
    else:
        names = [name.strip() for name in value.split(",")]
        if any(not name for name in names):
            raise CLIError(f"--classes {value!r} has an empty name; give names separated by commas")
        where = repr(value)
    if not names:
        raise CLIError(f"--classes {where} names no class")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CLIError(f"--classes {where} names {', '.join(map(repr, duplicates))} more than once")
    return names


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).casefold()


@dataclass
class ClassMapping:
    outputs: List[int]  # the model output of each folder, in folder order
    names: List[str]  # a name for every output 0 .. max(outputs)
    how: str  # how the folders were matched, for the terminal and the report


def map_classes(folders: Sequence[str], classes: Optional[List[str]], width: Optional[int]) -> ClassMapping:
    """Map the (printable) ``folders`` names to model outputs. ``width`` is the number of columns
    of the model's ``(N, C)`` output, or None when the output is not 2-D."""
    if classes is not None:
        outputs = [_match(folder, classes, folders) for folder in folders]
        how = "folders matched by name to --classes"
    else:
        numbers = [_NUMBERED.match(f) for f in folders]
        values = [int(m.group(1)) for m in numbers if m]
        by_number = (
            len(values) == len(folders)
            and len(set(values)) == len(values)
            and (width is None or max(values) < width)
        )
        if by_number:
            outputs, how = values, "folders mapped by their numeric prefix (no --classes)"
        else:
            outputs, how = list(range(len(folders))), "folders in sorted order (no --classes)"
    taken = {}
    for folder, out in zip(folders, outputs):
        if out in taken:
            raise CLIError(f"folders {taken[out]!r} and {folder!r} both map to output {out}; check --classes")
        taken[out] = folder
    names = []
    for j in range(max(outputs) + 1):
        if classes is not None:
            names.append(classes[j])
        else:
            names.append(taken.get(j, f"output {j}"))
    return ClassMapping(outputs, names, how)


def _match(folder: str, classes: List[str], folders: Sequence[str]) -> int:
    if folder in classes:
        return classes.index(folder)
    loose = [i for i, c in enumerate(classes) if _norm(c) == _norm(folder)]
    if len(loose) == 1:
        return loose[0]
    numbered = _NUMBERED.match(folder)
    if numbered:
        number, rest = int(numbered.group(1)), numbered.group(2)
        if number >= len(classes):
            raise CLIError(
                f"folder {folder!r} has number {number} but --classes names {len(classes)} outputs (0 .. "
                f"{len(classes) - 1})"
            )
        if rest and _norm(rest) != _norm(classes[number]):
            raise CLIError(
                f"folder {folder!r} has number {number} but output {number} of --classes is "
                f"{classes[number]!r}; rename the folder or fix --classes"
            )
        return number
    raise CLIError(
        f"folder {folder!r} of --images matches none of --classes; the folders are {list(folders)}, "
        f"--classes names {classes}"
    )


def chance_threshold(n_outputs: int) -> float:
    """Accuracy below which a ``n_outputs``-way classifier is "near chance": twice chance, but at
    most halfway between chance and 100 % (two classes: 75 %)."""
    chance = 1.0 / n_outputs
    return min(2.0 * chance, (1.0 + chance) / 2.0)


def best_relabelling(confusion: torch.Tensor) -> Tuple[int, List[int]]:
    """Most images right under any one-to-one map of folders (rows) to outputs (columns) of
    ``confusion`` (K, C), K <= C: ``(images right, output of each folder)``. The Hungarian
    assignment (scipy, a dependency of scikit-learn) or, without scipy, a greedy one."""
    counts = confusion.to(torch.float64).numpy()
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # greedy: the largest remaining cell first
        rows, cols, pairs = set(), set(), {}
        for flat in counts.ravel().argsort()[::-1]:
            r, c = divmod(int(flat), counts.shape[1])
            if r not in rows and c not in cols:
                rows.add(r)
                cols.add(c)
                pairs[r] = c
        assignment = [pairs[r] for r in range(counts.shape[0])]
    else:
        _, cols_found = linear_sum_assignment(counts, maximize=True)
        assignment = [int(c) for c in cols_found]
    return int(sum(counts[r, c] for r, c in enumerate(assignment))), assignment


@dataclass
class AccuracyCheck:
    accuracy: float  # top-1 under the mapping
    n_images: int
    n_outputs: int
    best_accuracy: float  # under the best relabelling of folders to outputs
    best_outputs: List[int]  # that relabelling: the output of each folder
    near_chance: bool
    far_below_best: bool

    @property
    def suspicious(self) -> bool:
        return self.near_chance or self.far_below_best


def check_accuracy(predicted: torch.Tensor, folder: torch.Tensor, mapping: ClassMapping, n_outputs: int):
    """Top-1 accuracy of ``predicted`` outputs ``(N,)`` against the folders' outputs, and whether
    it is near chance or far below the best relabelling of folders to outputs."""
    targets = torch.tensor(mapping.outputs)[folder]
    right = int((predicted == targets).sum())
    n = len(predicted)
    k = len(mapping.outputs)
    confusion = torch.zeros(k, n_outputs, dtype=torch.long)
    confusion.index_put_((folder, predicted), torch.ones(n, dtype=torch.long), accumulate=True)
    best_right, best_outputs = best_relabelling(confusion)
    accuracy, best = right / n, best_right / n
    return AccuracyCheck(
        accuracy=accuracy,
        n_images=n,
        n_outputs=n_outputs,
        best_accuracy=best,
        best_outputs=best_outputs,
        near_chance=accuracy < chance_threshold(n_outputs),
        # a few images more right by relabelling is noise; a large gap is not
        far_below_best=best - accuracy >= FAR_BELOW and best_right - right >= 3,
    )
