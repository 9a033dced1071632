"""AlternatingLengthBatchSampler: schedule, uniform windows, rank agreement and disjointness, exact resume."""

import itertools

import numpy as np
import pytest

from dreamer_dynamics.data import AlternatingLengthBatchSampler, DatasetError


def _sampler(lengths=(40, 25, 60, 12), **kwargs):
    defaults = dict(
        short_length=8, long_length=32, short_batch_size=4, long_batch_size=2, long_every=4, seed=1
    )
    return AlternatingLengthBatchSampler(lengths, **{**defaults, **kwargs})


def test_period_schedule_and_batch_sizes():
    sampler = _sampler(steps_per_epoch=12)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 12
    for step, batch in enumerate(batches):
        long = step % 4 == 3
        assert len(batch) == (2 if long else 4)
        assert {w[2] for w in batch} == {32 if long else 8}


def test_share_schedule_is_a_pure_function_of_seed_and_step():
    a = _sampler(long_every=None, long_share=0.25, seed=5)
    b = _sampler(long_every=None, long_share=0.25, seed=5, rank=1, world_size=2)
    flags = [a.is_long(s) for s in range(4000)]
    assert flags == [b.is_long(s) for s in range(4000)]
    assert abs(np.mean(flags) - 0.25) < 0.03
    assert flags != [_sampler(long_every=None, long_share=0.25, seed=6).is_long(s) for s in range(4000)]
    assert not any(_sampler(long_every=None).is_long(s) for s in range(50))  # neither given: short only


def test_windows_are_valid_and_uniform_over_start_positions():
    lengths = (10, 20)
    sampler = _sampler(lengths, short_length=5, long_every=None, short_batch_size=8)
    counts = np.zeros((2, 16))
    for step in range(3000):
        for episode, start, length in sampler.batch(step):
            assert length == 5 and 0 <= start <= lengths[episode] - 5
            counts[episode, start] += 1
    valid = np.concatenate([counts[0, :6], counts[1, :16]])  # 6 + 16 valid starts
    assert counts[0, 6:].sum() == 0
    expected = valid.sum() / len(valid)
    chi2 = ((valid - expected) ** 2 / expected).sum()
    assert chi2 < 50, chi2  # 21 degrees of freedom: p(chi2 > 50) < 0.001


def test_short_episodes_only_serve_short_batches():
    sampler = _sampler((40, 12), steps_per_epoch=40)
    for step in range(40):
        for episode, _, length in sampler.batch(step):
            if length == 32:
                assert episode == 0
    assert {e for s in range(40) for e, _, _ in sampler.batch(s)} == {0, 1}


def test_errors_when_no_episode_is_long_enough():
    with pytest.raises(
        DatasetError, match="no episode is long enough for batches of 32 frames .longest episode: 20"
    ):
        _sampler((20, 12))
    _sampler((20, 12), long_every=None)  # short-only schedule does not need long episodes
    with pytest.raises(DatasetError, match="batches of 8 frames"):
        _sampler((5, 6))


def test_long_only_mode():
    sampler = _sampler(long_only=True, steps_per_epoch=5)
    assert all(len(b) == 2 and b[0][2] == 32 for b in sampler)


def test_two_ranks_same_length_disjoint_windows_union_is_global_batch():
    lengths = (50, 70, 33, 90, 41)
    ranks = [_sampler(lengths, rank=r, world_size=2, long_every=3, steps_per_epoch=30) for r in range(2)]
    single = _sampler(lengths, short_batch_size=8, long_batch_size=4, long_every=3, steps_per_epoch=30)
    for step, (b0, b1) in enumerate(zip(*ranks)):
        assert len(b0) == len(b1) and b0[0][2] == b1[0][2]  # same length on both ranks at every step
        assert not set(b0) & set(b1)  # disjoint windows
        assert sorted(b0 + b1) == sorted(single.batch(step))  # together they are one global batch
    assert len(ranks[0]) == len(ranks[1])


def test_exact_resume_from_state_dict():
    uninterrupted = _sampler(steps_per_epoch=7)
    reference = list(itertools.chain(*(list(uninterrupted) for _ in range(3))))  # 3 epochs
    first = _sampler(steps_per_epoch=7)
    seen = []
    for batch in first:  # stop in the middle of epoch 0
        seen.append(batch)
        if len(seen) == 5:
            break
    state = first.state_dict()
    assert state["step"] == 5
    resumed = _sampler(steps_per_epoch=7)
    resumed.load_state_dict(state)
    rest = list(resumed) + list(resumed) + list(resumed)  # rest of epoch 0, then epochs 1 and 2
    assert len(rest) == 16
    assert seen + rest == reference


def test_position_provider_overrides_prefetched_position():
    sampler = _sampler(steps_per_epoch=10)
    iterator = iter(sampler)
    for _ in range(6):  # a prefetching loader pulled 6 batches but only 3 were consumed
        next(iterator)
    sampler.position_provider = lambda: (3, 3)
    assert list(sampler) == [sampler.batch(s) for s in range(3, 10)]


def test_default_steps_per_epoch_covers_the_frames_once():
    sampler = _sampler((1000, 1000), long_every=None, short_batch_size=5, short_length=10)
    assert len(sampler) == 2000 // 50
    assert (
        len(_sampler((1000, 1000), long_every=None, short_batch_size=5, short_length=10, world_size=2)) == 20
    )
