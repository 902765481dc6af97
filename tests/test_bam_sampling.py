"""Task mixing: shares proportional to |D|^0.75, mixed minibatches, a known number of steps."""

from collections import Counter

import numpy as np
import pytest

from bornagain_kd.errors import UserError
from bornagain_kd.glue.sampling import allocate_counts, plan_epoch, steps_per_epoch, task_shares, total_steps

SIZES = {"CoLA": 855, "SST-2": 6735, "MRPC": 367, "STS-B": 575, "RTE": 249}


def test_shares_follow_the_exponent():
    shares = task_shares(SIZES, 0.75)
    weights = {t: n**0.75 for t, n in SIZES.items()}
    for task in SIZES:
        assert shares[task] == pytest.approx(weights[task] / sum(weights.values()))
    assert sum(shares.values()) == pytest.approx(1.0)
    # Small tasks get more than their proportional share, the largest less.
    assert shares["RTE"] > SIZES["RTE"] / sum(SIZES.values())
    assert shares["SST-2"] < SIZES["SST-2"] / sum(SIZES.values())
    assert task_shares(SIZES, 0.0)["RTE"] == pytest.approx(0.2)


def test_counts_add_up():
    counts = allocate_counts(task_shares(SIZES, 0.75), 1001)
    assert sum(counts.values()) == 1001


def test_measured_shares_over_many_draws_match_the_exponent():
    """Count the tasks of every example the sampler draws over several epochs and batches."""
    drawn = Counter()
    for epoch in range(5):
        plan = plan_epoch(SIZES, 0.75, 32, seed=3, epoch=epoch)
        for b in range(plan.num_batches):
            drawn.update(task for task, _, _ in plan.batch(b))
    total = sum(drawn.values())
    expected = task_shares(SIZES, 0.75)
    proportional = {t: n / sum(SIZES.values()) for t, n in SIZES.items()}
    for task in SIZES:
        assert drawn[task] / total == pytest.approx(expected[task], abs=2e-3)
        assert abs(drawn[task] / total - proportional[task]) > 0.01  # distinguishable from alpha = 1


def test_minibatches_mix_tasks_and_rows_are_valid():
    plan = plan_epoch(SIZES, 0.75, 64, seed=0, epoch=0)
    assert plan.num_batches == steps_per_epoch(SIZES, 64)
    mixed = [len({t for t, _, _ in plan.batch(b)}) for b in range(plan.num_batches)]
    assert np.mean(mixed) > 3  # most minibatches hold several tasks
    for b in range(plan.num_batches):
        for task, row, _ in plan.batch(b):
            assert 0 <= row < SIZES[task]
    # A small task's examples are all visited (repeated), not a random subset with gaps.
    rte_rows = {row for b in range(plan.num_batches) for t, row, _ in plan.batch(b) if t == "RTE"}
    assert rte_rows == set(range(SIZES["RTE"]))


def test_plan_is_deterministic_per_seed_and_epoch():
    a = plan_epoch(SIZES, 0.75, 64, seed=1, epoch=2)
    b = plan_epoch(SIZES, 0.75, 64, seed=1, epoch=2)
    c = plan_epoch(SIZES, 0.75, 64, seed=1, epoch=3)
    assert np.array_equal(a.example_index, b.example_index) and np.array_equal(a.task_index, b.task_index)
    assert not np.array_equal(a.example_index, c.example_index)


def test_both_orders_swaps_only_the_chosen_tasks_about_half_the_time():
    plan = plan_epoch(SIZES, 0.75, 64, seed=0, epoch=0, swap_tasks=("MRPC", "STS-B"))
    triples = [x for b in range(plan.num_batches) for x in plan.batch(b)]
    swapped = [s for t, _, s in triples if t in ("MRPC", "STS-B")]
    assert 0.4 < np.mean(swapped) < 0.6
    assert not any(s for t, _, s in triples if t not in ("MRPC", "STS-B"))


def test_total_steps_and_errors():
    assert total_steps(SIZES, 64, 2.0) == 2 * steps_per_epoch(SIZES, 64)
    assert total_steps(SIZES, 64, 0.5) == -(-steps_per_epoch(SIZES, 64) // 2)
    with pytest.raises(UserError, match="no training examples"):
        task_shares({"RTE": 0}, 0.75)


def test_a_last_minibatch_smaller_than_the_world_is_dropped_on_every_rank():
    """Each rank takes a slice of every mixed minibatch: a last one of fewer examples than ranks would leave a
    rank with none. 69 examples in batches of 4: the 18th batch holds 1; under 2 processes it is dropped (17
    steps a epoch, every slice non-empty), under 1 process it is kept."""
    sizes = {"CoLA": 23, "MRPC": 23, "STS-B": 23}
    assert steps_per_epoch(sizes, 4) == 18 and steps_per_epoch(sizes, 4, world_size=2) == 17
    assert steps_per_epoch(sizes, 4, world_size=1) == 18 and steps_per_epoch({"RTE": 8}, 4, world_size=2) == 2
    assert total_steps(sizes, 4, 2.0, world_size=2) == 34
    plan = plan_epoch(sizes, 0.75, 4, seed=0, epoch=0)
    assert len(plan.batch(17)) == 1
    assert all(len(plan.batch(i)[rank::2]) >= 1 for i in range(17) for rank in (0, 1))
    with pytest.raises(UserError, match="cannot be shared by 4 processes"):
        steps_per_epoch({"RTE": 3}, 8, world_size=4)


def _padded_tokens(plan, lengths):
    """Tokens a run of this plan pays for: each minibatch is padded to its longest member."""
    return sum(len(batch) * max(lengths[t][row] for t, row, _ in batch)
               for batch in (plan.batch(b) for b in range(plan.num_batches)))


def test_length_bucketing_keeps_the_examples_mixes_tasks_and_cuts_padding():
    rng = np.random.default_rng(0)
    # GLUE-like lengths: single sentences short, sentence pairs (MRPC, STS-B, RTE) long.
    means = {"CoLA": 11, "SST-2": 13, "MRPC": 53, "STS-B": 31, "RTE": 70}
    lengths = {t: np.clip(rng.poisson(means[t], n), 3, 128) for t, n in SIZES.items()}
    plain = plan_epoch(SIZES, 0.75, 32, seed=4, epoch=1, swap_tasks=("MRPC",))
    bucketed = plan_epoch(SIZES, 0.75, 32, seed=4, epoch=1, swap_tasks=("MRPC",), lengths=lengths)
    assert plain.num_batches == bucketed.num_batches
    # The same drawn examples (with the same swaps), only in another order.
    key = lambda p: sorted(zip(p.task_index.tolist(), p.example_index.tolist(), p.swapped.tolist()))  # noqa: E731
    assert key(plain) == key(bucketed)
    assert not np.array_equal(plain.task_index, bucketed.task_index)
    # Padding falls by a large factor; full minibatches keep their size, the short one is last.
    assert _padded_tokens(bucketed, lengths) < 0.7 * _padded_tokens(plain, lengths)
    sizes = [len(bucketed.batch(b)) for b in range(bucketed.num_batches)]
    assert all(s == 32 for s in sizes[:-1]) and sizes[-1] == sum(SIZES.values()) - 32 * (len(sizes) - 1)
    # Tasks of similar length still share minibatches, and the batch order is not sorted by length.
    mixed = [len({t for t, _, _ in bucketed.batch(b)}) for b in range(bucketed.num_batches)]
    assert np.mean(mixed) > 1.5
    longest = [max(lengths[t][r] for t, r, _ in bucketed.batch(b)) for b in range(bucketed.num_batches)]
    assert longest != sorted(longest)
    # Deterministic in (seed, epoch): a resumed run re-creates it.
    again = plan_epoch(SIZES, 0.75, 32, seed=4, epoch=1, swap_tasks=("MRPC",), lengths=lengths)
    assert np.array_equal(again.example_index, bucketed.example_index)
