"""Grid block batches: a batch is a block of the factor grid (e.g. 16 voices x 32 texts).

In a full block every item has positives under every factor (same voice, other text;
same text, other voice) and negatives that differ in one factor only, which is what makes
the contrast interventional. The sampler draws, for each factor in turn, a set of values
with probability proportional to how many rows are still available with them, so on a
dense grid the block is uniform at random and on a sparse grid it favours values whose
cells exist. Then it keeps one row per cell and drops items left without a positive under
some factor (repeating until none is left). A batch in which some factor has no positive
pair or only one value is never emitted: the draw is retried, and after `max_tries`
failures `SamplerError` says the grid is too sparse for the block.

Batch `step` depends only on `(seed, step)`, so training resumes at any step with the
same batches, and two samplers with one seed agree.

>>> import pandas as pd
>>> grid = pd.DataFrame([(s, c) for s in "abcd" for c in "uvwxyz"], columns=["speaker", "content"])
>>> sampler = GridSampler(grid, {"speaker": 2, "content": 3}, seed=0, num_batches=2)
>>> [len(batch) for batch in sampler]
[6, 6]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd

from .errors import SubspacesError

__all__ = ["GridSampler", "SamplerError"]


class SamplerError(SubspacesError, ValueError):
    """The table and block cannot give valid batches; the message says why."""


class GridSampler:
    """Index arrays (`int64[batch]`, positions into `table`) of grid blocks.

    table: one row per item with a column per factor named in `block`.
    block: factor column -> how many of its values one batch holds (at least 2, so that
        every factor has negatives). Include a nuisance column (e.g. channel) here to get
        items that differ only in it; rows in one cell of the block's factors beyond the
        first are not used in that batch (one row per cell, picked at random).
    seed: the batches are a pure function of (seed, step).
    num_batches: length of one pass of `iter(sampler)`; None for an endless stream.
    max_tries: draws per batch before giving up on a too-sparse grid.

    >>> grid = pd.DataFrame({"speaker": list("aabb"), "content": list("xyxy")})
    >>> GridSampler(grid, {"speaker": 2, "content": 2}).batch(7).tolist()
    [0, 1, 2, 3]
    """

    def __init__(
        self,
        table: pd.DataFrame,
        block: Mapping[str, int],
        seed: int = 0,
        num_batches: int | None = None,
        max_tries: int = 100,
    ):
        if not block:
            raise SamplerError("block is empty; give factor columns and sizes, e.g. {'speaker': 16, 'content': 32}")
        missing = [name for name in block if name not in table.columns]
        if missing:
            raise SamplerError(f"factor column(s) {missing} not in the table; its columns are {list(table.columns)}")
        self.block = {name: int(size) for name, size in block.items()}
        self.codes: dict[str, np.ndarray] = {}
        for name, size in self.block.items():
            if table[name].isna().any():
                raise SamplerError(f"factor column {name!r} has missing values")
            codes, values = pd.factorize(table[name], sort=True)
            if size < 2:
                raise SamplerError(f"block size for {name!r} must be at least 2 (a factor needs negatives), got {size}")
            if size > len(values):
                raise SamplerError(
                    f"block size for {name!r} is {size}, but the table has only {len(values)} value(s) of it; use at most {len(values)}"
                )
            self.codes[name] = codes.astype(np.int64)
        cell_codes = np.stack(list(self.codes.values()), axis=1)
        self.cells = np.unique(cell_codes, axis=0, return_inverse=True)[1].reshape(-1)
        if num_batches is not None and num_batches < 1:
            raise SamplerError(f"num_batches must be positive or None, got {num_batches}")
        self.seed, self.num_batches, self.max_tries = seed, num_batches, max_tries
        self.num_rows = len(table)

    def batch(self, step: int) -> np.ndarray:
        """The batch for training step `step`: sorted `int64` row positions into the table."""
        for attempt in range(self.max_tries):
            rng = np.random.default_rng([self.seed, step, attempt])
            rows = self._draw(rng)
            if self._is_valid(rows):
                return rows
        raise SamplerError(
            f"no valid block of {self.block} found in {self.max_tries} draws (step {step}): the grid is too sparse; "
            "every item needs another with the same value of each factor. Use smaller block sizes or a denser grid."
        )

    def batches(self, start: int = 0) -> Iterator[np.ndarray]:
        """Batches for steps start, start + 1, ... (up to `num_batches`, or forever)."""
        stop = self.num_batches
        step = start
        while stop is None or step < stop:
            yield self.batch(step)
            step += 1

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.batches()

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless GridSampler (num_batches=None) has no length")
        return self.num_batches

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        available = np.ones(self.num_rows, dtype=bool)
        for name, size in self.block.items():
            counts = np.bincount(self.codes[name][available], minlength=self.codes[name].max() + 1)
            eligible = np.flatnonzero(counts)
            take = min(size, len(eligible))
            chosen = rng.choice(eligible, size=take, replace=False, p=counts[eligible] / counts[eligible].sum())
            available &= np.isin(self.codes[name], chosen)
        # one row per cell, chosen at random: shuffle, then keep each cell's first row
        candidates = rng.permutation(np.flatnonzero(available))
        _, first = np.unique(self.cells[candidates], return_index=True)
        rows = candidates[first]
        # drop items without a positive under some factor, until none is left
        while len(rows):
            keep = np.ones(len(rows), dtype=bool)
            for codes in self.codes.values():
                values = codes[rows]
                _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
                keep &= counts[inverse.reshape(-1)] >= 2
            if keep.all():
                break
            rows = rows[keep]
        return np.sort(rows)

    def _is_valid(self, rows: np.ndarray) -> bool:
        # after pruning every item has a positive; each factor also needs two values (negatives)
        return len(rows) >= 4 and all(len(np.unique(codes[rows])) >= 2 for codes in self.codes.values())
