"""AMP as a bundle option: on in training and validation on CUDA, off (logged once) on any other device."""

from __future__ import annotations

import logging

import pytest
from monai.bundle import ConfigParser

from alr_monai import utils
from alr_monai.workflow import bundle_file


def test_amp_is_off_on_cpu_and_says_so_once(caplog, monkeypatch):
    monkeypatch.setattr(utils, "_AMP_WARNED", set())
    assert utils.amp_enabled(False, "cpu") is False
    with caplog.at_level(logging.WARNING, logger="alr_monai.utils"):
        assert utils.amp_enabled(True, "cpu") is False
        assert utils.amp_enabled(True, "cpu") is False
    assert [r.getMessage() for r in caplog.records].count(
        "amp: automatic mixed precision needs a CUDA device; off on cpu"
    ) == 1
    assert not caplog.records[1:]


@pytest.mark.parametrize("key", ["train#trainer#amp", "validate#evaluator#amp", "relabel#trainer#amp"])
def test_bundle_wires_amp_to_the_engines(key):
    parser = ConfigParser()
    parser.read_config([bundle_file("train.json"), bundle_file("relabel.json")])
    assert parser["amp"] is False
    parser["device"] = "cpu"
    parser["amp"] = True
    assert parser.get_parsed_content(key) is False  # requested, but CPU: off rather than a CUDA scaler warning
    assert "@amp" in parser[key]
