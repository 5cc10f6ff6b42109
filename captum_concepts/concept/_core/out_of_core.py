"""Out-of-core coupled NMF: activations streamed to disk, the fit run over chunks of examples.

The data of a coupled factorisation is ``R = sum_b r_b`` features per example
(pixel channels and layer outputs). :class:`ActivationStore` keeps them in one
example-major binary file (``N x R``, float32 or float16; ``as_array`` opens it
as a read-only ``numpy.memmap``), written batch by batch. The solver then only
keeps the factors in memory and reads the file in chunks of examples, sized so
that the whole fit stays within :class:`OutOfCore`'s ``memory_budget``.

Why chunking is exact: every product with the data is a sum over examples
(``X F^T``, the data moments) or local to each example (``W^T X``, one column of
``F`` at a time), so a pass over chunks computes the very same quantities as
the in-memory solver (:mod:`.cnmf_solvers`), up to float summation order.

Chunks are read with ``readinto`` into one reused buffer rather than through a
memory map, so that file pages never count towards the process's resident
memory.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, replace
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..._utils.validation import InvalidParameterError, RealNumber, check_int, check_option
from . import cnmf_solvers as solvers
from .activations import BlockSpec, CollectedBlocks, stream_blocks
from .nonnegative_blocks import apply_shift

__all__ = ["OutOfCore", "ActivationStore", "StreamedProblem", "collect_to_store", "parse_bytes"]

_UNITS = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
_STORAGE = {torch.float32: np.float32, torch.float16: np.float16}
_FLOAT16_MAX = float(torch.finfo(torch.float16).max)


MAX_BUDGET = 2**60  # 1 EiB: anything larger is a typo, not a machine


def parse_bytes(value: Union[int, float, str], argument: str = "memory_budget") -> int:
    """``1 << 30``, ``"512MB"``, ``"2 GB"`` -> bytes (binary units: 1 MB = 2**20 bytes)."""
    expected = (
        f"{argument} must be a positive, finite number of bytes (at most 2**60) or a string like "
        f"'512MB', got {value!r}"
    )
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?B?)\s*", value.upper())
        if not match or match.group(2) not in _UNITS:
            raise ValueError(expected)
        value = float(match.group(1)) * _UNITS[match.group(2)]
    if not RealNumber(low=1, high=MAX_BUDGET).holds(value):
        raise InvalidParameterError(expected)
    return int(value)


@dataclass
class OutOfCore:
    """Settings of an out-of-core fit (pass as ``CoupledNMFConcepts(out_of_core=OutOfCore(...))``).

    Args:
        memory_budget (int or str): bytes (a finite number up to ``2**60``, or
            ``"512MB"``, ``"2GB"``) the fit may hold
            at once: the factors, their statistics and one chunk of examples. The
            factors alone need about ``s * d * (4 N + 6 R)`` bytes (``s`` = 4 for
            float32, ``d`` concepts, ``N`` examples, ``R`` features); the rest
            sets the chunk size. Too small a budget raises a ``ValueError`` that
            states the minimum; an eighth of the budget is kept as slack for
            per-chunk products and the BLAS library's workspace (a few MB).
            Not counted: the model and one forward batch while collecting, and
            the footprint of Python and torch.
        directory (str, optional): an existing, writable folder for the activation
            file (default: the system temporary folder); checked before any data
            is read. The file is anonymous: it is unlinked as soon as it is
            opened (or never named, with ``O_TMPFILE``), so nothing is left in the
            folder however the process ends -- an exception, SIGTERM, SIGKILL or
            the out-of-memory killer; its space is freed when the fit finishes.
        storage_dtype (torch.dtype): ``torch.float32`` or ``torch.float16``, the dtype on disk. float16 halves
            the file and the reads; values are rounded to float16 (11-bit
            mantissa), and computation still runs in the estimator's ``dtype``.

    Example::

        from captum_concepts.concept import CoupledNMFConcepts, OutOfCore

        cnmf = CoupledNMFConcepts(n_concepts=5, model=model, layers=["block3.relu"], max_iter=20,
                                  out_of_core=OutOfCore("64MB"), random_state=0)
        cnmf.fit(data.x_train[:256])  # activations streamed to a temporary file, 64 MB at a time
    """

    memory_budget: Union[int, str] = "1GB"
    directory: Optional[str] = None
    storage_dtype: torch.dtype = torch.float32

    def budget_bytes(self) -> int:
        return parse_bytes(self.memory_budget)

    def check(self) -> None:
        """Validate every setting (called by the estimator before any data is read)."""
        self.budget_bytes()
        check_option(self.storage_dtype, "storage_dtype", tuple(_STORAGE))
        if self.directory is not None:
            check_directory(self.directory, "OutOfCore(directory=...)")


def check_directory(directory: Any, argument: str) -> str:
    """``directory`` if it is an existing, writable folder; a clear error otherwise."""
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"{argument} must be a folder path (str), got {type(directory).__name__}")
    path = os.fspath(directory)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{argument}: the folder {path!r} does not exist")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"{argument}: {path!r} is a file, not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{argument}: the folder {path!r} is not writable")
    return path


class ActivationStore:
    """An ``N x R`` example-major matrix on disk, appended batch by batch, read in chunks.

    Args:
        path (str, optional): the file (created or truncated; kept until you
            delete it). None (the default): an anonymous file in ``directory``
            that has no name on disk -- it is unlinked as soon as it is opened,
            so nothing is left behind when the process ends, however it ends
            (even SIGKILL or the out-of-memory killer).
        block_rows (sequence of int): ``r_b`` of every block (pixel blocks first, then layers).
        storage_dtype (torch.dtype): float32 or float16.
        n_pixel_blocks (int): how many of the blocks are pixel blocks.
        directory (str, optional): folder of the anonymous file (default: the
            system temporary folder).

    While appending it records per-feature minima and maxima and, for float16
    storage, which blocks held finite values beyond float16's range
    (``|x| > 65504``), so a fit validates the data without another pass.

    Example::

        from captum_concepts.concept import ActivationStore, CoupledNMFConcepts, OutOfCore

        store = ActivationStore(None, [64, 32], n_pixel_blocks=1)  # a temporary file
        for _ in range(4):  # batches of (B, 64) pixel rows and (B, 32) activation rows
            store.append([torch.rand(16, 64), torch.rand(16, 32)])
        cnmf = CoupledNMFConcepts(8, out_of_core=OutOfCore("256MB"), random_state=0).fit_store(store)
    """

    def __init__(
        self,
        path: Optional[str],
        block_rows: Sequence[int],
        storage_dtype: torch.dtype = torch.float32,
        n_pixel_blocks: int = 0,
        directory: Optional[str] = None,
    ) -> None:
        check_option(storage_dtype, "storage_dtype", tuple(_STORAGE))
        if isinstance(block_rows, (str, bytes)) or not isinstance(block_rows, Sequence) or not block_rows:
            raise ValueError(f"block_rows must be a non-empty sequence of positive ints, got {block_rows!r}")
        self.block_rows = [check_int(r, f"block_rows[{b}]", low=1) for b, r in enumerate(block_rows)]
        self.n_pixel_blocks = check_int(n_pixel_blocks, "n_pixel_blocks", low=0, high=len(self.block_rows))
        self.storage_dtype = storage_dtype
        self.n_examples = 0
        self.row_min = torch.full((self.n_features,), float("inf"), dtype=torch.float64)
        self.row_max = torch.full((self.n_features,), float("-inf"), dtype=torch.float64)
        self.overflow = [False] * len(self.block_rows)  # finite values above float16's largest
        self.layer_names: List[str] = []
        self.layer_shapes: List[Tuple[int, ...]] = []
        self.input_shape: Optional[Tuple[int, ...]] = None
        self._writable = True
        if path is None:
            folder = None if directory is None else check_directory(directory, "directory")
            # O_TMPFILE where the OS has it: the file never has a name
            self._file = tempfile.TemporaryFile(prefix="cnmf-", suffix=".bin", dir=folder)
            self.path: Optional[str] = None
        else:
            self.path = str(path)
            self._file = open(self.path, "w+b")

    @property
    def n_features(self) -> int:
        return sum(self.block_rows)

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.storage_dtype).element_size()

    @property
    def nbytes(self) -> int:
        return self.n_examples * self.n_features * self.itemsize

    def append(self, rows: Sequence[Tensor]) -> None:
        """Add a batch: one ``(B, r_b)`` tensor per block (examples as rows).

        Raises:
            ValueError: closed store or wrong shapes. NaN, infinite values and values
                that overflow float16 storage are recorded and refused by the fit.
        """
        if not self._writable:
            raise ValueError("this ActivationStore is closed for writing")
        if len(rows) != len(self.block_rows):
            raise ValueError(f"append needs {len(self.block_rows)} blocks, got {len(rows)}")
        for b, (x, r) in enumerate(zip(rows, self.block_rows)):
            if x.dim() != 2 or x.shape[1] != r or x.shape[0] != rows[0].shape[0]:
                raise ValueError(f"block {b} must be (B, {r}) with the batch's B, got {tuple(x.shape)}")
        exact = [x.detach().cpu() for x in rows]
        if self.storage_dtype == torch.float16:
            for b, x in enumerate(exact):
                big = x.abs().amax(dim=0) if x.numel() else x.new_zeros(0)
                self.overflow[b] |= bool((torch.isfinite(big) & (big > _FLOAT16_MAX)).any())
        batch = torch.cat([x.to(self.storage_dtype) for x in exact], dim=1)
        self.row_min = torch.minimum(self.row_min, batch.amin(dim=0).double())
        self.row_max = torch.maximum(self.row_max, batch.amax(dim=0).double())
        self._file.seek(0, os.SEEK_END)
        self._file.write(memoryview(batch.contiguous().numpy()).cast("B"))
        self.n_examples += batch.shape[0]

    def close(self) -> ActivationStore:
        """Finish writing (flushes the file; reading works only after this)."""
        if self._writable and self._file is not None:
            self._file.flush()
            self._writable = False
        return self

    def delete(self) -> None:
        """Close the file and remove it (an anonymous file simply disappears)."""
        self._writable = False
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path is not None and os.path.exists(self.path):
            os.remove(self.path)

    def __del__(self) -> None:  # the descriptor stays open for reading until the store goes away
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()

    def _fileno(self) -> int:
        if self._file is None:
            raise ValueError("this ActivationStore was deleted")
        self.close()
        return self._file.fileno()

    def as_array(self) -> np.memmap:
        """The data as a read-only ``(N, R)`` ``numpy.memmap``."""
        fileno = self._fileno()
        with os.fdopen(os.dup(fileno), "rb") as f:
            return np.memmap(f, dtype=_STORAGE[self.storage_dtype], mode="r", shape=self.shape)

    @property
    def shape(self) -> Tuple[int, int]:
        return (self.n_examples, self.n_features)

    def chunks(self, chunk_rows: int, buffer: Tensor) -> Iterator[Tuple[int, int, Tensor]]:
        """Yield ``(start, stop, rows)`` with ``rows`` a view of ``buffer`` ``(stop - start, R)``.

        ``buffer`` (``(chunk_rows, R)``, storage dtype) is reused: copy what you keep.
        Reads with ``os.preadv`` at explicit offsets, so several readers may interleave.
        """
        fileno = self._fileno()
        raw = buffer.numpy().reshape(-1)
        row_bytes = self.n_features * self.itemsize
        for start in range(0, self.n_examples, chunk_rows):
            stop = min(start + chunk_rows, self.n_examples)
            view = memoryview(raw[: (stop - start) * self.n_features]).cast("B")
            got = 0
            while got < len(view):
                n = os.preadv(fileno, [view[got:]], start * row_bytes + got)
                if n == 0:
                    raise OSError(
                        f"the activation store is shorter than expected ({got} of {len(view)} bytes)"
                    )
                got += n
            yield start, stop, buffer[: stop - start]


class StreamedProblem(solvers.CoupledProblem):
    """A :class:`~.cnmf_solvers.CoupledProblem` whose data lives in an :class:`ActivationStore`.

    It holds no data block: :meth:`moments`, :meth:`project` and
    :meth:`statistics` (the solver's only passes over the data) read the store in
    chunks of ``chunk_rows`` examples. ``shift`` (``(R,)``, or None) is
    subtracted from every row read (and the result clipped at 0), as the
    in-memory ``shift="min"`` does.
    """

    def __init__(
        self,
        store: ActivationStore,
        chunk_rows: int,
        shift: Optional[Tensor],
        *args,
        buffers: Optional[dict] = None,
        **kwargs,
    ):
        self.store = store
        self.chunk_rows = int(chunk_rows)
        self.shift = shift
        super().__init__(*args, **kwargs)
        # one raw (storage dtype, CPU) and one compute buffer; pass the same dict to share them
        self.buffers = {} if buffers is None else buffers
        if not self.buffers:
            dtype, device = self.blocks[0].dtype, self.blocks[0].device
            self.buffers["raw"] = torch.empty(self.chunk_rows, store.n_features, dtype=store.storage_dtype)
            same = store.storage_dtype == dtype and device.type == "cpu"
            self.buffers["rows"] = (
                None if same else torch.empty(self.chunk_rows, store.n_features, dtype=dtype, device=device)
            )

    @property
    def n_examples(self) -> int:
        return self.store.n_examples

    def _chunks(self) -> Iterator[Tuple[int, int, Tensor]]:
        buf = self.buffers["rows"]
        for start, stop, raw in self.store.chunks(self.chunk_rows, self.buffers["raw"]):
            rows = raw if buf is None else buf[: stop - start].copy_(raw)
            yield start, stop, apply_shift(rows, self.shift, dim=1, inplace=True)

    def moments(self, reduce=solvers._identity) -> Tensor:
        out = torch.zeros(len(self.blocks), 2, dtype=torch.float64)
        for _, _, rows in self._chunks():
            for b, (start, stop) in enumerate(zip(self.offsets[:-1], self.offsets[1:])):
                x = rows[:, start:stop]
                # per-feature partial sums first: no float64 copy of the chunk
                out[b, 0] += x.sum(dim=0).double().sum().cpu()
                out[b, 1] += torch.linalg.vector_norm(x, dim=0).double().square().sum().cpu()
        return reduce(out.to(self.blocks[0].device))

    def project(self, Wt: Tensor) -> Tensor:
        weighted = Wt * self.row_weight  # the block weights folded in: one product per chunk
        A = torch.empty(Wt.shape[0], self.n_examples, dtype=Wt.dtype, device=Wt.device)
        for start, stop, rows in self._chunks():
            A[:, start:stop] = weighted @ rows.t()
        return A

    def residuals(self, Wt: Tensor, F: Tensor, reduce=solvers._identity) -> Tensor:
        acc = solvers.accumulation_dtype(F.dtype)
        Wa, out = Wt.to(acc), torch.zeros(len(self.blocks), dtype=torch.float64, device=F.device)
        for start, stop, rows in self._chunks():
            sq = torch.mm(F[:, start:stop].t().to(acc), Wa).sub_(rows.to(acc)).square_()
            for b, (a, c) in enumerate(zip(self.offsets[:-1], self.offsets[1:])):
                out[b] += sq[:, a:c].sum(dtype=torch.float64)
        return reduce(out)

    def statistics(self, F: Tensor, reduce=solvers._identity) -> solvers.Statistics:
        St = torch.zeros(F.shape[0], self.n_rows, dtype=F.dtype, device=F.device)
        for start, stop, rows in self._chunks():
            St.addmm_(F[:, start:stop], rows)
        group_sq = None
        if self.uses_groups:
            group_sq = reduce(solvers._group_sq(F, self.group_index, self.n_groups))
        return solvers.Statistics(St=reduce(St), G=reduce(F @ F.t()), group_sq=group_sq)


def plan_chunk_rows(
    budget: int, n_examples: int, n_features: int, n_concepts: int, dtype: torch.dtype, storage: torch.dtype
) -> int:
    """Examples per chunk so that factors + statistics + chunk buffers fit in ``budget`` bytes."""
    s = torch.empty((), dtype=dtype).element_size()
    st = torch.empty((), dtype=storage).element_size()
    d, n, r = n_concepts, n_examples, n_features
    # F, A (= W^T X) and two (d, N) temporaries of the F update; Wt, its weighted copy, St
    # and two (d, R) temporaries of the Wt update; the float64 draw of the random start
    loop = s * d * (4 * n + 6 * r)
    start = (8 + s) * d * (n + r)
    # + slack for per-chunk (d, chunk) products and allocator overhead
    fixed = max(loop, start) + (1 << 16) + budget // 8
    per_row = r * (st + (s if s != st else 0))
    rows = (budget - fixed) // per_row
    if rows < 1:
        raise ValueError(
            f"memory_budget={budget} bytes is too small for d={d}, N={n}, R={r}: the factors need "
            f"{fixed} bytes and one example {per_row} more (at least {fixed + per_row} bytes)"
        )
    return int(min(rows, max(n, 1)))


def collect_to_store(
    spec: BlockSpec,
    inputs: Any,
    settings: OutOfCore,
    additional_forward_args: Any = None,
    has_labels: bool = False,
) -> ActivationStore:
    """One pass over ``inputs`` (tensor or loader) writing pixel and layer rows to a new store.

    The batches are read as the in-memory fit reads them (:func:`.activations.stream_blocks`), in
    float32, and go straight to disk.
    """
    meta = CollectedBlocks(layer_names=list(spec.names))
    spec = replace(spec, dtype=torch.float32)  # the store rounds the rows to its storage dtype
    stream = stream_blocks(spec, inputs, meta, additional_forward_args, has_labels)
    store = None
    try:
        for _, rows in stream:
            if store is None:
                n_pixel = len(rows) - len(spec.modules)
                store = ActivationStore(
                    None, [x.shape[1] for x in rows], settings.storage_dtype, n_pixel, settings.directory
                )
            store.append(rows)
    except BaseException:
        if store is not None:
            store.delete()
        raise
    store.layer_names, store.layer_shapes = meta.layer_names, meta.layer_shapes
    store.input_shape = meta.input_shape
    return store.close()
