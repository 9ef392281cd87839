"""The segment-recall generator: exact placement, stratified depths, a rigged model scores
100%, a uniform one scores chance, the report's shortcut levels match simulated shortcuts."""

import pytest
import torch

from conftest import induction_logits
from tapa.evaluate.recall import score
from tapa.evaluate.segment_recall import SegmentTask, make_segment_batch, stratified_segment_depths

TASK = SegmentTask(n_tokens=20, n_filler=6, segment=5)


def lookup_model(ids: torch.Tensor) -> torch.Tensor:
    return induction_logits(ids, TASK.vocab_size)


@pytest.mark.parametrize("length", [10, 23, 200])
def test_copies_sit_exactly_at_the_requested_depths(length):
    g = torch.Generator().manual_seed(length)
    depths = stratified_segment_depths(7, length, TASK, g)
    batch = make_segment_batch(TASK, 7, length, g, depths)
    seg, last = TASK.segment, length - 2 * TASK.segment
    assert batch.ids.shape == (7, length) and batch.query_positions.shape == (7, seg - 1)
    for i in range(7):
        row = batch.ids[i].tolist()
        start = round(float(depths[i]) * last)
        copy = row[-seg:]
        assert len(set(copy)) == seg and all(t < TASK.n_tokens for t in copy)
        assert row[start : start + seg] == copy
        rest = row[:start] + row[start + seg : length - seg]
        assert all(TASK.n_tokens <= t < TASK.vocab_size for t in rest)  # filler only, outside the copies
        assert batch.query_positions[i].tolist() == list(range(length - seg, length - 1))
        assert batch.key_positions[i].tolist() == list(range(start, start + seg - 1))
        assert batch.targets[i, length - seg : length - 1].tolist() == copy[1:]
        assert (batch.targets[i] != -100).sum() == seg - 1
        expected = start / last if last else 0.0
        assert batch.depths[i].tolist() == [expected] * (seg - 1)


def test_training_starts_are_uniform_and_bad_inputs_are_refused():
    g = torch.Generator().manual_seed(0)
    batch = make_segment_batch(TASK, 4000, 20, g)  # last = 10: starts 0..10
    counts = torch.bincount(batch.key_positions[:, 0], minlength=11)
    assert len(counts) == 11 and counts.min() > 4000 / 11 * 0.75
    with pytest.raises(ValueError, match="below the task's minimum"):
        make_segment_batch(TASK, 1, 9, g)
    with pytest.raises(ValueError, match="segment <= n_tokens"):
        make_segment_batch(SegmentTask(n_tokens=3, segment=4), 1, 20, g)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_segment_batch(TASK, 1, 20, g, torch.tensor([1.5]))


def test_stratified_depths_cover_every_stratum():
    g = torch.Generator().manual_seed(1)
    last = 60 - 2 * TASK.segment  # starts 0..50 over 5 strata of 51 / 5 starts
    starts = (stratified_segment_depths(5, 60, TASK, g) * last).round().long()
    edges = [round(i * 51 / 5) for i in range(6)]
    assert sorted(torch.bucketize(starts, torch.tensor(edges[1:-1]), right=True).tolist()) == [0, 1, 2, 3, 4]
    # more sequences than starts: every start used, none out of range
    many = (stratified_segment_depths(40, 14, TASK, g) * 4).round().long()
    assert set(many.tolist()) == {0, 1, 2, 3, 4}
    assert stratified_segment_depths(3, 10, TASK, g).tolist() == [0.0, 0.0, 0.0]


def test_rigged_model_scores_100_percent_and_uniform_scores_chance():
    g = torch.Generator().manual_seed(2)
    for length in (10, 60, 240):
        batch = make_segment_batch(TASK, 6, length, g, stratified_segment_depths(6, length, TASK, g))
        result = score(lookup_model, TASK, batch)
        assert result.accuracy == 1.0 and result.probability == pytest.approx(1.0)
    batch = make_segment_batch(TASK, 3000, 30, g)
    uniform = score(lambda ids: torch.zeros(*ids.shape, TASK.vocab_size), TASK, batch)
    assert uniform.probability == pytest.approx(1 / TASK.n_tokens, rel=1e-12)
    sd = (0.05 * 0.95 / (3000 * 4)) ** 0.5
    assert abs(uniform.accuracy - 1 / TASK.n_tokens) < 4 * sd


def test_shortcut_levels_match_simulated_shortcut_models():
    """Naming a random token of the segment, and one not yet seen in the repeat."""
    from tapa.study.recall_report import shortcut_levels

    g = torch.Generator().manual_seed(3)
    batch = make_segment_batch(TASK, 3000, 20, g)
    seg = TASK.segment
    hits_any = hits_unseen = 0
    for i in range(3000):
        copy = batch.ids[i, -seg:].tolist()
        for j in range(seg - 1):  # predicting copy[j + 1] with copy[: j + 1] seen
            hits_any += copy[int(torch.randint(seg, (1,), generator=g))] == copy[j + 1]
            unseen = copy[j + 1 :]
            hits_unseen += unseen[int(torch.randint(len(unseen), (1,), generator=g))] == copy[j + 1]
    n = 3000 * (seg - 1)
    any_level, unseen_level = shortcut_levels({"kind": "segment", "segment": seg})
    assert any_level == pytest.approx(0.2) and unseen_level == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert abs(hits_any / n - any_level) < 4 * (any_level * (1 - any_level) / n) ** 0.5
    assert abs(hits_unseen / n - unseen_level) < 4 * (unseen_level * (1 - unseen_level) / n) ** 0.5
