"""LabelStore / LabelLookup and SubsetShuffleSampler: the plumbing that lets a run follow the expert's labels."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from alr_monai.relabel.training import LabelLookup, LabelStore, SubsetShuffleSampler


def batch(indices: list[int], cached_labels: list[int] | None = None) -> dict:
    return {
        "image": torch.arange(len(indices), dtype=torch.float32).reshape(-1, 1, 1, 1),
        "label": torch.tensor(cached_labels if cached_labels is not None else [0] * len(indices)),
        "index": torch.tensor(indices),
    }


# ------------------------------------------------------------------------------------------------ labels
def test_label_lookup_reads_the_store_not_the_cached_batch_label():
    given = [0, 1, 2, 3, 4]
    store = LabelStore(given)
    given[0] = 4  # the store keeps its own copy
    lookup = LabelLookup(store)
    image, labels = lookup(batch([4, 0, 2], cached_labels=[9, 9, 9]), device="cpu")
    assert labels.tolist() == [4, 0, 2]
    assert labels.dtype == torch.long
    assert torch.equal(image, batch([4, 0, 2])["image"])
    assert store.verified.tolist() == [False] * 5


def test_labels_follow_updates():
    store = LabelStore(torch.tensor([0, 1, 2, 3]))
    lookup = LabelLookup(store)
    store.update([3, 1, 0, 3], [True, False, True, False])
    assert lookup(batch([0, 1, 2, 3]))[1].tolist() == [3, 1, 0, 3]
    assert store.verified.tolist() == [True, False, True, False]
    store.update([2, 2, 2, 2], [False] * 4)
    assert lookup(batch([2, 0]))[1].tolist() == [2, 2]
    assert not store.verified.any()


def test_an_excluded_label_reaching_a_batch_raises():
    store = LabelStore([0, 1, 2])
    lookup = LabelLookup(store)
    store.update([0, -1, 2], [False, False, False])
    assert lookup(batch([0, 2]))[1].tolist() == [0, 2]  # batches without the excluded sample are fine
    with pytest.raises(RuntimeError, match="excluded"):
        lookup(batch([0, 1]))


# ----------------------------------------------------------------------------------------------- sampler
def draw(sampler: SubsetShuffleSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(iter(sampler))


def test_sampler_has_a_fixed_length_and_only_draws_from_the_subset():
    sampler = SubsetShuffleSampler(range(50), num_samples=50, seed=1)
    assert len(sampler) == 50
    assert sorted(draw(sampler, 1)) == list(range(50))  # a full subset: a permutation
    subset = [3, 8, 13, 21, 34, 40, 47]
    sampler.set_indices(subset)
    for epoch in (1, 2, 3):
        order = draw(sampler, epoch)
        assert len(order) == len(sampler) == 50
        assert set(order) == set(subset)
        counts = Counter(order)
        assert min(counts.values()) >= 50 // len(subset)  # cycled through whole permutations
        assert max(counts.values()) <= 50 // len(subset) + 1


def test_sampler_is_reproducible_per_epoch():
    sampler = SubsetShuffleSampler(range(30), seed=7)
    first, again = draw(sampler, 2), draw(sampler, 2)
    assert first == again
    assert first != draw(sampler, 3)
    assert draw(SubsetShuffleSampler(range(30), seed=7), 2) == first  # a resumed run draws the same order
    assert draw(SubsetShuffleSampler(range(30), seed=8), 2) != first


def test_sampler_refuses_an_empty_subset_and_balanced_draws_without_labels():
    sampler = SubsetShuffleSampler(range(10))
    with pytest.raises(ValueError, match="no samples"):
        sampler.set_indices([])
    balanced = SubsetShuffleSampler(range(10), class_balanced=True)
    with pytest.raises(ValueError, match="labels"):
        balanced.set_indices([1, 2, 3])


def test_class_balanced_draws_are_roughly_balanced_on_a_90_10_subset():
    labels = torch.tensor([0] * 900 + [1] * 100 + [1] * 500)  # the last 500 are outside the subset
    subset = list(range(1000))
    balanced = SubsetShuffleSampler(subset, num_samples=1000, seed=0, class_balanced=True)
    balanced.set_indices(subset, labels)
    plain = SubsetShuffleSampler(subset, num_samples=1000, seed=0)
    plain.set_indices(subset)

    balanced_draws = [i for epoch in range(10) for i in draw(balanced, epoch)]
    plain_draws = [i for epoch in range(10) for i in draw(plain, epoch)]
    assert len(balanced_draws) == 10_000 and set(balanced_draws) <= set(subset)
    rare_share = float((labels[balanced_draws] == 1).float().mean())
    assert 0.45 < rare_share < 0.55
    assert float((labels[plain_draws] == 1).float().mean()) == pytest.approx(0.1)
    assert draw(balanced, 4) == draw(balanced, 4)
    assert len(set(balanced_draws)) > 900  # with replacement, yet most samples get seen
