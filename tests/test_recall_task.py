"""The associative-recall generator and scorer: exact placement, a rigged model scores
100%, a uniform model scores chance (1/V)."""

import pytest
import torch

from conftest import induction_logits
from tapa.evaluate.recall import RecallTask, make_batch, score, stratified_depths

TASK = RecallTask(n_keys=16, n_values=10, n_filler=12, n_pairs=5, n_queries=3)


def lookup_model(ids: torch.Tensor) -> torch.Tensor:
    return induction_logits(ids, TASK.vocab_size)


@pytest.mark.parametrize("length", [24, 64, 300])
def test_pairs_sit_exactly_at_the_requested_depths(length):
    g = torch.Generator().manual_seed(length)
    depths = stratified_depths(6, TASK.n_queries, length, TASK, g)
    batch = make_batch(TASK, 6, length, g, depths)
    context = length - 2 * TASK.n_queries
    last = context - 3
    assert batch.ids.shape == (6, length)
    torch.testing.assert_close(batch.key_positions, (depths * last).round().long())
    torch.testing.assert_close(batch.depths, depths)  # stratified depths are whole slots: exact
    keys, values = range(1, 17), TASK.value_ids
    for i in range(6):
        row = batch.ids[i].tolist()
        assert row[context - 1] == 0 and row.count(0) == 1  # one separator, right before the queries
        context_keys = [t for t in row[: context - 1] if t in keys]
        assert len(context_keys) == TASK.n_pairs == len(set(context_keys))  # distinct keys, one per pair
        for j in range(TASK.n_queries):
            k, q = int(batch.key_positions[i, j]), int(batch.query_positions[i, j])
            assert q == context + 2 * j and row[q] == row[k] and row[k] in keys
            assert row[q + 1] == row[k + 1] and row[k + 1] in values  # the query's value is the pair's value
            assert batch.targets[i, q] == row[q + 1]
        assert (batch.targets[i] != -100).sum() == TASK.n_queries


def test_random_placement_covers_the_context_and_overlapping_depths_are_refused():
    g = torch.Generator().manual_seed(0)
    batch = make_batch(TASK, 200, 40, g)
    assert batch.key_positions.min() == 0 and batch.key_positions.max() == 40 - 6 - 3
    with pytest.raises(ValueError, match="same tokens"):
        make_batch(TASK, 1, 40, g, torch.tensor([[0.5, 0.5, 0.1]]))
    with pytest.raises(ValueError, match="below the task's minimum"):
        make_batch(TASK, 1, TASK.min_length() - 1, g)


def test_repeat_queries_draws_planted_pairs_with_replacement():
    """repeat_queries: every query is a planted key followed by its own value, and a key may
    be asked twice; without it (and with depths, whatever the flag) the queries are distinct."""
    rep = RecallTask(n_keys=16, n_values=10, n_filler=12, n_pairs=3, n_queries=6, repeat_queries=True)
    g = torch.Generator().manual_seed(3)
    batch = make_batch(rep, 300, 40, g)
    context = 40 - 2 * rep.n_queries
    repeats = 0
    for i in range(300):
        row = batch.ids[i].tolist()
        planted = {row[s]: row[s + 1] for s in range(context - 1) if 1 <= row[s] <= rep.n_keys}
        assert len(planted) == rep.n_pairs
        asked = [row[context + 2 * j] for j in range(rep.n_queries)]
        for j, k in enumerate(asked):
            assert planted[k] == row[context + 2 * j + 1] == batch.targets[i, context + 2 * j]
            assert row[int(batch.key_positions[i, j])] == k
        repeats += len(asked) > len(set(asked))
    assert repeats == 300  # 6 queries of 3 pairs: every row repeats a key
    distinct = make_batch(TASK, 100, 40, g)
    assert all(len(set(r.tolist())) == TASK.n_queries for r in distinct.key_positions)
    placed = make_batch(
        RecallTask(n_pairs=5, n_queries=3, repeat_queries=True), 20, 60, g, stratified_depths(20, 3, 60, TASK, g)
    )
    assert all(len(set(r.tolist())) == 3 for r in placed.key_positions)


def test_rigged_model_scores_100_percent_at_every_length():
    g = torch.Generator().manual_seed(1)
    for length in (30, 120, 480):
        batch = make_batch(TASK, 8, length, g, stratified_depths(8, TASK.n_queries, length, TASK, g))
        result = score(lookup_model, TASK, batch)
        assert result.accuracy == 1.0 and result.probability == pytest.approx(1.0)


def test_uniform_model_scores_chance():
    g = torch.Generator().manual_seed(2)
    batch = make_batch(TASK, 2000, 40, g)
    uniform = score(lambda ids: torch.zeros(*ids.shape, TASK.vocab_size), TASK, batch)
    assert uniform.probability == pytest.approx(1 / TASK.n_values, rel=1e-12)
    # argmax of equal logits picks the first value token: right when the planted value is it
    n = 2000 * TASK.n_queries
    sd = (0.1 * 0.9 / n) ** 0.5
    assert abs(uniform.accuracy - 1 / TASK.n_values) < 4 * sd
    # a model that always names one value scores its frequency: also chance
    noisy = score(lambda ids: torch.randn(*ids.shape, TASK.vocab_size, generator=g), TASK, batch)
    assert abs(noisy.accuracy - 1 / TASK.n_values) < 4 * sd


def test_stratified_depths_cover_every_stratum_and_refuse_a_short_context():
    g = torch.Generator().manual_seed(3)
    depths = stratified_depths(500, TASK.n_queries, 60, TASK, g)
    last = 60 - 2 * TASK.n_queries - 3  # 51 -> starts 0..51 in strata [0, 17), [17, 35), [35, 52)
    starts = (depths * last).round().long()
    strata = torch.bucketize(starts, torch.tensor([17, 35]), right=True)
    for row, start in zip(strata, starts, strict=True):  # one query per stratum; a pair fits inside it
        assert sorted(row.tolist()) == [0, 1, 2]
        assert all(s + 1 < end for s, end in zip(start.tolist(), [[17, 35, 52][i] for i in row.tolist()], strict=True))
    assert starts.min() == 0 and starts.max() == 50
    with pytest.raises(ValueError, match="too short"):
        stratified_depths(1, TASK.n_queries, 13, TASK, g)


def test_shortcut_levels_match_simulated_shortcut_models():
    """The report's shortcut levels: a model naming a random planted value, and one that also
    skips values already answered, simulated on generated batches."""
    from tapa.study.recall_report import shortcut_levels

    task = RecallTask(n_keys=40, n_values=1000, n_filler=20, n_pairs=4, n_queries=4)  # values almost never repeat
    g = torch.Generator().manual_seed(5)
    batch = make_batch(task, 3000, 40, g)
    context = 40 - 2 * task.n_queries
    hits_any = hits_skip = 0
    for i in range(3000):
        row = batch.ids[i]
        planted = [int(t) for t in row[: context - 1] if int(t) in task.value_ids]
        left = list(planted)  # values not yet answered (one occurrence removed per answer)
        for j in range(task.n_queries):
            truth = int(row[context + 2 * j + 1])
            pick = planted[int(torch.randint(len(planted), (1,), generator=g))]
            hits_any += pick == truth
            hits_skip += left[int(torch.randint(len(left), (1,), generator=g))] == truth
            left.remove(truth)
    any_level, skip_level = shortcut_levels({"n_pairs": 4, "n_queries": 4})
    n = 3000 * task.n_queries
    assert abs(hits_any / n - any_level) < 4 * (0.25 * 0.75 / n) ** 0.5
    assert abs(hits_skip / n - skip_level) < 0.02
