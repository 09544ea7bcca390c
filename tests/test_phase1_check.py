"""Warnings for a phase 1 that ended before its forget-rate ramp or whose trusted set is implausible (issue 25,
item 5): said on the console, kept in metrics.json."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from alr_monai.phase1_check import check_phase1, phase1_warnings


def _metrics(epoch: int, **train) -> dict:
    return {"epoch": epoch, "last": {"epoch": epoch, "train": train}}


def test_a_phase1_stopped_before_its_ramp_is_named_with_the_numbers_and_the_fix():
    # issue 25: --max_epochs 4 with a 10-epoch ramp trusted 80% of the data at precision 0.50
    metrics = _metrics(4, forget_rate=0.24, noise_rate_estimate=0.6, selection_precision=0.5)
    (warning,) = phase1_warnings(metrics, 0.8, num_gradual=10, estimate_epoch=2)
    assert "ended at epoch 4, before its forget-rate ramp (10 epochs)" in warning
    assert "reached 0.24 (its target: 0.60)" in warning and "keeps 80% of the samples" in warning
    assert "precision against the injected truth: 0.50" in warning
    assert "--max_epochs 10" in warning and "--coteaching#num_gradual 4" in warning


def test_a_trusted_set_far_above_the_estimated_clean_share_is_implausible():
    metrics = _metrics(20, forget_rate=0.6, noise_rate_estimate=0.6)
    (warning,) = phase1_warnings(metrics, 0.7, num_gradual=10, estimate_epoch=2)
    assert "keeps 70% of the samples while the noise rate is 0.60 (estimated)" in warning
    assert phase1_warnings(metrics, 0.42, num_gradual=10, estimate_epoch=2) == []  # about 1 - 0.6: plausible


def test_no_estimate_means_no_judgement_and_forget_rate_0_means_no_selection():
    (warning,) = phase1_warnings(_metrics(1, forget_rate=0.0), 1.0, num_gradual=1, estimate_epoch=2)
    assert "no noise-rate estimate (it is made after epoch 2; phase 1 ran 1)" in warning
    # the ce preset: one network on every sample, no selection by design
    assert phase1_warnings(_metrics(3, forget_rate=0.0), 1.0, num_gradual=10, forget_rate=0.0) == []


def test_check_phase1_logs_and_records_the_warnings_in_metrics_json(tmp_path: Path, caplog):
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics(2, forget_rate=0.1, noise_rate_estimate=0.5)))
    with open(tmp_path / "selection.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "index", "given_label", "loss", "trusted"])
        writer.writerows([[f"s{i}", i, 0, 1.0, int(i < 9)] for i in range(10)])
    with caplog.at_level(logging.WARNING, logger="alr_monai.phase1"):
        warnings = check_phase1(tmp_path, num_gradual=5, estimate_epoch=2)
    assert len(warnings) == 1 and "keeps 90% of the samples" in warnings[0]
    assert [record.getMessage() for record in caplog.records] == warnings
    assert json.loads((tmp_path / "metrics.json").read_text())["warnings"] == warnings


def test_the_report_shows_the_warnings_first(tmp_path: Path):
    from alr_monai.report import _banners

    metrics = {**_metrics(4), "test": {}, "warnings": ["phase 1 ended at epoch 4, before its forget-rate ramp"]}
    assert _banners(tmp_path, metrics, None) == ["Warning: phase 1 ended at epoch 4, before its forget-rate ramp"]
