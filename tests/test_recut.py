"""Issue 28 item 4: a random audit in the first round corrects each class's noise rate and re-cuts the trusted set."""

from __future__ import annotations

import json

import pytest
import torch

from alr_monai.relabel.recut import AUDIT_FILE, TrustedRecut

# two given classes of 10; phase 1 trusted the 6 lowest-loss samples of each (rate 0.4)
GIVEN = [0] * 10 + [1] * 10
LOSSES = [float(k) for k in range(10)] * 2
TRUSTED = [k < 6 for k in range(10)] * 2


def _recut(tmp_path, per_class=2, prior=(0.4, 0.4), strength=4.0):
    return TrustedRecut(tmp_path, GIVEN, TRUSTED, LOSSES, list(prior), per_class=per_class, prior_strength=strength)


def test_disabled_recut_keeps_phase_1s_cut_and_draws_nothing(tmp_path):
    recut = _recut(tmp_path, per_class=0)
    assert not recut.enabled
    assert recut.draw([True] * 20, 1) == []
    assert recut.trusted_mask(GIVEN, [False] * 20) == TRUSTED
    assert not (tmp_path / AUDIT_FILE).exists()


def test_audit_draws_each_part_of_each_class_once_and_deterministically(tmp_path):
    recut = _recut(tmp_path)
    drawn = recut.draw([True] * 20, 1)
    assert len(drawn) == 8  # 2 per class from each part
    parts = recut.draws()
    for part, want in (("trusted", True), ("pool", False)):
        assert all(TRUSTED[i] is want for i in parts[part])
        assert sorted(GIVEN[i] for i in parts[part]) == [0, 0, 1, 1]
    assert recut.draw([True] * 20, 2) == []  # drawn once
    (tmp_path / AUDIT_FILE).unlink()
    assert _recut(tmp_path).draw([True] * 20, 1) == drawn  # the same seed draws the same samples
    # an unanswerable sample (answered or excluded already) is never drawn
    (tmp_path / AUDIT_FILE).unlink()
    closed = [i not in drawn for i in range(20)]
    assert not set(_recut(tmp_path).draw(closed, 1)) & set(drawn)


def test_a_dirty_trusted_set_is_cut_harder_and_a_clean_pool_gives_samples_back(tmp_path):
    recut = _recut(tmp_path, strength=1.0)
    recut.draw([True] * 20, 1)
    parts = recut.draws()
    labels = list(GIVEN)
    answered = [False] * 20
    for i in parts["trusted"] + parts["pool"]:
        answered[i] = True
    # class 0: both audited trusted samples were wrong; class 1: both audited pool samples were right
    for i in parts["trusted"]:
        if GIVEN[i] == 0:
            labels[i] = 1
    for i in parts["pool"]:
        if GIVEN[i] == 0:
            labels[i] = 1  # class 0's pool is as noisy as phase 1 said
    rates = recut.corrected_rates(labels, answered)
    assert rates[0] > 0.4 and rates[1] < 0.4
    mask = recut.trusted_mask(labels, answered)
    # answered samples train (with their answers) whatever the cut says
    assert all(mask[i] for i in range(20) if answered[i])
    unanswered_kept = [sum(mask[i] for i in range(20) if GIVEN[i] == c and not answered[i]) for c in (0, 1)]
    phase1_kept = [sum(TRUSTED[i] for i in range(20) if GIVEN[i] == c and not answered[i]) for c in (0, 1)]
    assert unanswered_kept[0] < phase1_kept[0] and unanswered_kept[1] > phase1_kept[1]
    # kept by loss: within a class the re-cut keeps the lowest-loss unanswered samples
    for c in (0, 1):
        kept = [LOSSES[i] for i in range(20) if GIVEN[i] == c and not answered[i] and mask[i]]
        dropped = [LOSSES[i] for i in range(20) if GIVEN[i] == c and not answered[i] and not mask[i]]
        assert not dropped or max(kept) < min(dropped)
    truth = [1 if (GIVEN[i] == 0 and LOSSES[i] >= 4) else GIVEN[i] for i in range(20)]
    metrics = recut.simulation_metrics(labels, answered, truth)
    assert set(metrics) == {"noise_estimate", "noise_estimate_class_mae", "noise_estimate_phase1_class_mae"}


def test_a_class_is_never_starved(tmp_path):
    recut = TrustedRecut(tmp_path, GIVEN, TRUSTED, LOSSES, [0.99, 0.99], per_class=1, min_keep=0.3)
    recut.draw([True] * 20, 1)
    answered = [False] * 20
    labels = list(GIVEN)
    for i in recut.draws()["trusted"] + recut.draws()["pool"]:
        answered[i] = True
        labels[i] = 1 - GIVEN[i]
    mask = recut.trusted_mask(labels, answered)
    for c in (0, 1):
        unanswered = [i for i in range(20) if GIVEN[i] == c and not answered[i]]
        assert sum(mask[i] for i in unanswered) >= 0.3 * len(unanswered)


def test_a_damaged_audit_file_is_named(tmp_path):
    (tmp_path / AUDIT_FILE).write_text(json.dumps({"round": 1}))
    with pytest.raises(ValueError, match=AUDIT_FILE):
        _recut(tmp_path).draws()
    with pytest.raises(ValueError, match="per_class"):
        _recut(tmp_path, per_class=-1)
    assert torch.isfinite(_recut(tmp_path).losses).all()
