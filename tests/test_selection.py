from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alr_monai.algorithms.selection import forget_rate_schedule, num_to_keep, select_small_loss, select_with_vog


def test_forget_rate_schedule_ramps_linearly_then_holds():
    rates = [forget_rate_schedule(epoch, 0.4, num_gradual=5) for epoch in range(8)]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4])


def test_forget_rate_schedule_exponent_matches_reference_code():
    # Reference: rate_schedule[:num_gradual] = np.linspace(0, forget_rate**exponent, num_gradual)
    reference = np.ones(6) * 0.5
    reference[:3] = np.linspace(0, 0.5**2, 3)
    assert [forget_rate_schedule(e, 0.5, 3, exponent=2) for e in range(6)] == pytest.approx(reference.tolist())


def test_forget_rate_schedule_no_ramp_and_validation():
    assert forget_rate_schedule(0, 0.3, num_gradual=0) == pytest.approx(0.3)
    for bad in [
        dict(final_rate=1.0, num_gradual=2),
        dict(final_rate=-0.1, num_gradual=2),
        dict(final_rate=0.2, num_gradual=-1),
    ]:
        with pytest.raises(ValueError):
            forget_rate_schedule(0, **bad)
    with pytest.raises(ValueError):
        forget_rate_schedule(-1, 0.2, 2)


def test_num_to_keep():
    assert num_to_keep(10, 0.0) == 10
    assert num_to_keep(10, 0.3) == 7
    assert num_to_keep(128, 0.6) == round(0.4 * 128) == 51
    assert num_to_keep(3, 0.9) == 1  # never an empty selection from a non-empty batch
    assert num_to_keep(1, 1.0) == 1
    assert num_to_keep(0, 0.5) == 0


def test_select_small_loss_picks_smallest_with_positional_ties():
    losses = torch.tensor([0.5, 0.1, 0.5, 0.9, 0.1, float("nan")])
    keep = select_small_loss(losses, 3)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [True, True, False, False, True, False]  # tie at 0.5: first one wins
    assert select_small_loss(losses, 0).sum() == 0
    assert select_small_loss(losses, 5).tolist() == [True, True, True, True, True, False]  # NaN last
    with pytest.raises(ValueError):
        select_small_loss(losses, 7)


@pytest.mark.parametrize("forget_rate", [0.0, 0.2, 0.45, 0.8])
def test_selection_keeps_exactly_the_scheduled_count(forget_rate):
    generator = torch.Generator().manual_seed(0)
    losses = torch.rand(37, generator=generator)
    vog = torch.rand(37, generator=generator)
    vog[::5] = float("nan")
    expected = num_to_keep(37, forget_rate)
    assert int(select_small_loss(losses, expected).sum()) == expected
    for mix in [0.0, 0.2, 0.5, 1.0]:
        assert int(select_with_vog(losses, expected, vog, mix).sum()) == expected


def test_select_with_vog_honours_mix_ratio():
    # Loss order: 0,1,2,3,4,5,6,7. VoG order (ascending): 7,6,5,4,3,2,1,0.
    losses = torch.arange(8, dtype=torch.float32)
    vog = torch.arange(8, 0, -1, dtype=torch.float32)
    keep = select_with_vog(losses, num_keep=5, vog_scores=vog, mix_ratio=0.4)
    # n_vog = round(0.4 * 5) = 2: samples 0,1,2 by loss, then 7,6 by VoG.
    assert keep.nonzero().flatten().tolist() == [0, 1, 2, 6, 7]


def test_select_with_vog_skips_samples_loss_already_picked():
    # The lowest VoG belongs to sample 0, which the loss already picked: VoG must take the next one instead.
    losses = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    vog = torch.tensor([0.0, 9.0, 9.0, 0.5, 0.1, 9.0])
    keep = select_with_vog(losses, num_keep=3, vog_scores=vog, mix_ratio=2 / 3)
    assert keep.nonzero().flatten().tolist() == [0, 3, 4]


def test_select_with_vog_nan_scores_rank_last_and_fall_back_to_loss():
    losses = torch.tensor([0.0, 5.0, 1.0, 4.0, 3.0])
    vog = torch.tensor([float("nan"), float("nan"), 0.7, float("nan"), float("nan")])
    keep = select_with_vog(losses, num_keep=3, vog_scores=vog, mix_ratio=1.0)
    # Only sample 2 has a score; the two other VoG picks are the NaN ones with the smallest loss (0 and 4).
    assert keep.nonzero().flatten().tolist() == [0, 2, 4]
    all_nan = torch.full((5,), float("nan"))
    assert torch.equal(select_with_vog(losses, 3, all_nan, 0.5), select_small_loss(losses, 3))


def test_select_with_vog_without_scores_equals_small_loss():
    losses = torch.tensor([3.0, 1.0, 2.0, 0.5])
    vog = torch.tensor([0.0, 1.0, 2.0, 3.0])
    expected = select_small_loss(losses, 2)
    assert torch.equal(select_with_vog(losses, 2, None, 0.5), expected)
    assert torch.equal(select_with_vog(losses, 2, vog, 0.0), expected)
    assert not torch.equal(select_with_vog(losses, 2, vog, 1.0), expected)
    with pytest.raises(ValueError):
        select_with_vog(losses, 2, vog[:3], 0.5)
    with pytest.raises(ValueError):
        select_with_vog(losses, 2, vog, 1.5)


def test_select_with_vog_rounding_of_vog_share():
    losses = torch.arange(10, dtype=torch.float32)
    vog = -torch.arange(10, dtype=torch.float32)  # lowest VoG = highest loss
    keep = select_with_vog(losses, num_keep=7, vog_scores=vog, mix_ratio=0.2)
    n_vog = round(0.2 * 7)
    assert n_vog == 1 and not math.isclose(0.2 * 7, n_vog)
    assert keep.nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5, 9]
