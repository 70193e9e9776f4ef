"""Grid block batches on dense, sparse and three-factor toy grids."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from subspaces.sampler import GridSampler, SamplerError


def dense_grid(speakers: int, texts: int) -> pd.DataFrame:
    return pd.DataFrame(
        [(f"s{s}", f"t{t}") for s in range(speakers) for t in range(texts)], columns=["speaker", "content"]
    )


def assert_every_item_has_positives(table: pd.DataFrame, rows: np.ndarray, factors: list[str]) -> None:
    batch = table.iloc[rows]
    for factor in factors:
        counts = batch[factor].value_counts()
        assert (counts >= 2).all(), f"{factor}: some item has no positive in {batch}"
        assert len(counts) >= 2, f"{factor}: only one value, no negatives"


def test_dense_block_is_a_full_grid_block():
    table = dense_grid(6, 10)
    sampler = GridSampler(table, {"speaker": 2, "content": 4}, seed=3)
    for step in range(20):
        rows = sampler.batch(step)
        batch = table.iloc[rows]
        assert len(rows) == 8 and len(set(rows)) == 8
        assert batch["speaker"].nunique() == 2 and batch["content"].nunique() == 4
        # every (speaker, text) of the block is present: each item has a negative differing in one factor only
        assert set(zip(batch["speaker"], batch["content"])) == set(
            itertools.product(batch["speaker"].unique(), batch["content"].unique())
        )
        assert_every_item_has_positives(table, rows, ["speaker", "content"])


def test_reproducible_by_seed_and_step_and_covers_the_grid():
    table = dense_grid(6, 10)
    first = [b.tolist() for b in GridSampler(table, {"speaker": 2, "content": 4}, seed=1, num_batches=30)]
    again = [b.tolist() for b in GridSampler(table, {"speaker": 2, "content": 4}, seed=1, num_batches=30)]
    other = [b.tolist() for b in GridSampler(table, {"speaker": 2, "content": 4}, seed=2, num_batches=30)]
    assert first == again
    assert first != other
    # a resumed stream from step 10 gives the same batches as the uninterrupted one
    resumed = GridSampler(table, {"speaker": 2, "content": 4}, seed=1, num_batches=30).batches(start=10)
    assert [b.tolist() for b in resumed] == first[10:]
    seen = set(itertools.chain.from_iterable(first))
    assert len(seen) > 0.9 * len(table)  # 30 random blocks of 8 out of 60 cells cover nearly all


def test_fixed_length_and_endless_iterators():
    sampler = GridSampler(dense_grid(4, 4), {"speaker": 2, "content": 2}, num_batches=5)
    assert len(sampler) == 5 and len(list(sampler)) == 5
    endless = GridSampler(dense_grid(4, 4), {"speaker": 2, "content": 2})
    assert len(list(itertools.islice(endless, 50))) == 50
    with pytest.raises(TypeError):
        len(endless)


def test_sparse_grid_never_emits_a_factor_without_positives():
    rng = np.random.default_rng(0)
    table = dense_grid(12, 20)
    table = table[rng.random(len(table)) < 0.4].reset_index(drop=True)  # 60% of cells missing
    sampler = GridSampler(table, {"speaker": 4, "content": 6}, seed=0)
    for step in range(200):
        rows = sampler.batch(step)
        assert rows.max() < len(table)
        assert_every_item_has_positives(table, rows, ["speaker", "content"])


def test_staircase_grid_where_most_blocks_are_empty():
    # speaker i says only texts i, i+1 and i+2: most 3 x 3 blocks are nearly empty, but
    # neighbouring speakers share texts, so valid batches exist and must be found
    rows = [(f"s{i}", f"t{i + k}") for i in range(10) for k in range(3)]
    table = pd.DataFrame(rows, columns=["speaker", "content"])
    sampler = GridSampler(table, {"speaker": 3, "content": 3}, seed=0)
    for step in range(50):
        assert_every_item_has_positives(table, sampler.batch(step), ["speaker", "content"])


def test_impossible_grid_raises_clearly():
    # every speaker says a different text: no item can have a positive under both factors
    table = pd.DataFrame({"speaker": [f"s{i}" for i in range(8)], "content": [f"t{i}" for i in range(8)]})
    with pytest.raises(SamplerError, match="too sparse"):
        GridSampler(table, {"speaker": 2, "content": 2}, max_tries=20).batch(0)


def test_three_factors_and_repeated_cells():
    table = pd.DataFrame(
        [(f"s{s}", f"t{t}", f"c{c}", rep) for s in range(3) for t in range(4) for c in range(2) for rep in range(3)],
        columns=["speaker", "content", "channel", "take"],
    )
    sampler = GridSampler(table, {"speaker": 2, "content": 2, "channel": 2}, seed=5)
    for step in range(20):
        rows = sampler.batch(step)
        batch = table.iloc[rows]
        assert len(rows) == 8  # 2 x 2 x 2 cells, one take each
        assert not batch.duplicated(["speaker", "content", "channel"]).any()
        assert_every_item_has_positives(table, rows, ["speaker", "content", "channel"])


def test_bad_arguments_name_the_problem():
    table = dense_grid(3, 3)
    with pytest.raises(SamplerError, match="'voice'"):
        GridSampler(table, {"voice": 2})
    with pytest.raises(SamplerError, match="only 3 value"):
        GridSampler(table, {"speaker": 4, "content": 2})
    with pytest.raises(SamplerError, match="at least 2"):
        GridSampler(table, {"speaker": 1, "content": 2})
