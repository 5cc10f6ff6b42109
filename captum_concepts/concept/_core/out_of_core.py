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
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from . import cnmf_solvers as solvers

__all__ = ["OutOfCore", "ActivationStore", "StreamedProblem", "collect_to_store", "parse_bytes"]

_UNITS = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
_STORAGE = {torch.float32: np.float32, torch.float16: np.float16}


def parse_bytes(value: Union[int, float, str], argument: str = "memory_budget") -> int:
    """``1 << 30``, ``"512MB"``, ``"2 GB"`` -> bytes (binary units: 1 MB = 2**20 bytes)."""
    if isinstance(value, (int, float, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?B?)\s*", value.upper())
        if match and match.group(2) in _UNITS:
            return int(float(match.group(1)) * _UNITS[match.group(2)])
    raise ValueError(f"{argument} must be a positive number of bytes or a string like '512MB', got {value!r}")


@dataclass
class OutOfCore:
    """Settings of an out-of-core fit (pass as ``CoupledNMFConcepts(out_of_core=OutOfCore(...))``).

    Args:
        memory_budget (int or str): bytes (or ``"512MB"``, ``"2GB"``) the fit may hold
            at once: the factors, their statistics and one chunk of examples. The
            factors alone need about ``s * d * (4 N + 6 R)`` bytes (``s`` = 4 for
            float32, ``d`` concepts, ``N`` examples, ``R`` features); the rest
            sets the chunk size. Too small a budget raises a ``ValueError`` that
            states the minimum; an eighth of the budget is kept as slack for
            per-chunk products and the BLAS library's workspace (a few MB).
            Not counted: the model and one forward batch while collecting, and
            the footprint of Python and torch.
        directory (str, optional): where the activation file is written (default:
            the system temporary directory). :meth:`CoupledNMFConcepts.fit` deletes
            its file after fitting.
        storage_dtype (torch.float32 or torch.float16): dtype on disk. float16 halves
            the file and the reads; values are rounded to float16 (11-bit
            mantissa), and computation still runs in the estimator's ``dtype``.
    """

    memory_budget: Union[int, str] = "1GB"
    directory: Optional[str] = None
    storage_dtype: torch.dtype = torch.float32

    def budget_bytes(self) -> int:
        return parse_bytes(self.memory_budget)

    def check(self) -> None:
        self.budget_bytes()
        if self.storage_dtype not in _STORAGE:
            raise ValueError(
                f"storage_dtype must be torch.float32 or torch.float16, got {self.storage_dtype!r}"
            )


class ActivationStore:
    """An ``N x R`` example-major matrix on disk, appended batch by batch, read in chunks.

    Args:
        path (str): the file (created or truncated).
        block_rows (sequence of int): ``r_b`` of every block (pixel blocks first, then layers).
        storage_dtype (torch.dtype): float32 or float16.
        n_pixel_blocks (int): how many of the blocks are pixel blocks.

    While appending it records per-feature minima and whether every value is
    finite, so a fit validates the data without another pass.

    Example::

        >>> store = ActivationStore("acts.bin", [64, 32], n_pixel_blocks=1)
        >>> for x_pix, x_act in batches:          # (B, 64) and (B, 32) rows
        ...     store.append([x_pix, x_act])
        >>> cnmf = CoupledNMFConcepts(8, out_of_core=OutOfCore("256MB")).fit_store(store)
    """

    def __init__(
        self,
        path: str,
        block_rows: Sequence[int],
        storage_dtype: torch.dtype = torch.float32,
        n_pixel_blocks: int = 0,
    ) -> None:
        if storage_dtype not in _STORAGE:
            raise ValueError(f"storage_dtype must be torch.float32 or torch.float16, got {storage_dtype!r}")
        self.block_rows = [int(r) for r in block_rows]
        if not self.block_rows or min(self.block_rows) < 1:
            raise ValueError(f"block_rows must be positive ints, got {list(block_rows)}")
        self.path = str(path)
        self.storage_dtype = storage_dtype
        self.n_pixel_blocks = int(n_pixel_blocks)
        self.n_examples = 0
        self.row_min = torch.full((self.n_features,), float("inf"), dtype=torch.float64)
        self.finite = True
        self.layer_names: List[str] = []
        self.layer_shapes: List[Tuple[int, ...]] = []
        self.input_shape: Optional[Tuple[int, ...]] = None
        self._file = open(self.path, "wb")

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
        """Add a batch: one ``(B, r_b)`` tensor per block (examples as rows)."""
        if self._file is None:
            raise ValueError("this ActivationStore is closed for writing")
        if len(rows) != len(self.block_rows):
            raise ValueError(f"append needs {len(self.block_rows)} blocks, got {len(rows)}")
        for b, (x, r) in enumerate(zip(rows, self.block_rows)):
            if x.dim() != 2 or x.shape[1] != r or x.shape[0] != rows[0].shape[0]:
                raise ValueError(f"block {b} must be (B, {r}) with the batch's B, got {tuple(x.shape)}")
        batch = torch.cat([x.detach().to("cpu", self.storage_dtype) for x in rows], dim=1)
        self.finite = self.finite and bool(torch.isfinite(batch).all())
        self.row_min = torch.minimum(self.row_min, batch.amin(dim=0).double())
        self._file.write(memoryview(batch.contiguous().numpy()).cast("B"))
        self.n_examples += batch.shape[0]

    def close(self) -> ActivationStore:
        """Finish writing (reading works only after this)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        return self

    def delete(self) -> None:
        self.close()
        if os.path.exists(self.path):
            os.remove(self.path)

    def as_array(self) -> np.memmap:
        """The data as a read-only ``(N, R)`` ``numpy.memmap``."""
        self.close()
        return np.memmap(self.path, dtype=_STORAGE[self.storage_dtype], mode="r", shape=self.shape)

    @property
    def shape(self) -> Tuple[int, int]:
        return (self.n_examples, self.n_features)

    def chunks(self, chunk_rows: int, buffer: Tensor) -> Iterator[Tuple[int, int, Tensor]]:
        """Yield ``(start, stop, rows)`` with ``rows`` a view of ``buffer`` ``(stop - start, R)``.

        ``buffer`` (``(chunk_rows, R)``, storage dtype) is reused: copy what you keep.
        """
        self.close()
        raw = buffer.numpy().reshape(-1)
        with open(self.path, "rb", buffering=0) as f:
            for start in range(0, self.n_examples, chunk_rows):
                stop = min(start + chunk_rows, self.n_examples)
                view = memoryview(raw[: (stop - start) * self.n_features]).cast("B")
                got = f.readinto(view)
                if got != len(view):
                    raise OSError(f"{self.path} is shorter than expected ({got} of {len(view)} bytes)")
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
            if self.shift is not None:
                rows.sub_(self.shift).clamp_(min=0)
            yield start, stop, rows

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
    model: Any,
    layers: Sequence[Any],
    inputs: Any,
    settings: OutOfCore,
    include_pixels: bool = True,
    pool: str = "none",
    batch_size: int = 256,
    device: Optional[torch.device] = None,
    reshape_transform: Any = None,
) -> ActivationStore:
    """One pass over ``inputs`` (tensor or loader) writing pixel and layer rows to a new store.

    Each batch goes through the same collection as the in-memory fit
    (:func:`.activations.collect_blocks`), then straight to disk.
    """
    from .activations import collect_blocks, iter_input_batches

    fd, path = tempfile.mkstemp(prefix="cnmf-", suffix=".bin", dir=settings.directory)
    os.close(fd)
    store = None
    try:
        for batch in iter_input_batches(inputs, batch_size):
            got = collect_blocks(
                model,
                layers,
                batch,
                include_pixels=include_pixels,
                pool=pool,
                batch_size=batch_size,
                device=device,
                reshape_transform=reshape_transform,
            )
            blocks = got.pixel_blocks + got.activation_blocks
            if store is None:
                store = ActivationStore(
                    path, [x.shape[0] for x in blocks], settings.storage_dtype, len(got.pixel_blocks)
                )
                store.layer_names, store.layer_shapes = got.layer_names, got.layer_shapes
                store.input_shape = got.input_shape
            elif got.input_shape != store.input_shape:
                raise ValueError(
                    f"inputs: every batch must have example shape {store.input_shape}, got {got.input_shape}"
                )
            store.append([x.t() for x in blocks])
    except BaseException:
        if store is not None:
            store.delete()
        elif os.path.exists(path):
            os.remove(path)
        raise
    if store is None:
        os.remove(path)
        raise ValueError("inputs yielded no examples")
    return store.close()
