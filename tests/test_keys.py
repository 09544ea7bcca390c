"""The key table (alr_monai/keys.py): every key exists in the bundle configs, the docs hold the same tables,
the choices match the modules that enforce them, and values are checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alr_monai import keys
from alr_monai.keys import KEYS, KeyError_, check_overrides, config_default, keys_for, render_docs
from alr_monai.workflow import bundle_dir

CONFIGS = bundle_dir() / "configs"


def test_every_key_is_defined_in_its_bundle_config():
    for key in KEYS:
        assert (CONFIGS / key.config).is_file(), key
        config_default(key.config, key.name)  # raises KeyError when the config lacks it
        assert key.meaning and "\n" not in key.meaning, key.name
        if key.shown_default is None:
            # A literal default: the table shows the config's value, and the key accepts it.
            assert not (isinstance(key.default, str) and key.default.startswith(("$", "@"))), key.name
            key.check(key.default)


def test_defaults_come_from_the_configs():
    train = json.loads((CONFIGS / "train.json").read_text())
    assert keys.Key("max_epochs", "train.json", "train", "int", "x").default == train["max_epochs"]
    assert {k.name: k.default for k in KEYS}["vog#mix_ratio"] == train["vog"]["mix_ratio"]
    relabel = json.loads((CONFIGS / "relabel.json").read_text())
    assert {k.name: k.default for k in KEYS}["relabel#round_budget"] == relabel["relabel"]["round_budget"]


def test_bundle_docs_hold_the_generated_key_tables():
    path = bundle_dir() / "docs" / "README.md"
    text = path.read_text(encoding="utf-8")
    assert render_docs(text) == text, f"{path} is out of date: run `python -m alr_monai.keys`"
    for key in KEYS:
        assert f"| `{key.name}` |" in text, key.name


def test_choices_match_the_modules_that_enforce_them():
    from alr_monai.algorithms.acquisition import ACQUISITION_NAMES
    from alr_monai.algorithms.noise_estimate import NOISE_ESTIMATION_METHODS, VALIDATION_METHODS
    from alr_monai.algorithms.stability import LR_SCHEDULES, MODEL_CHOICES
    from alr_monai.data.noise import NOISE_KINDS

    try:  # the round logic may live in relabel/driver.py
        from alr_monai.relabel.driver import MODES, RECIPES, UNQUERIED_RULES
    except ImportError:
        from alr_monai.handlers.active_relabel import MODES, RECIPES, UNQUERIED_RULES
    from alr_monai.handlers.selection import TRUSTED_RULES
    from alr_monai.handlers.vog import VOG_KEEP

    assert set(keys.ACQUISITIONS) == set(ACQUISITION_NAMES)
    assert keys.NOISE_ESTIMATION_METHODS == NOISE_ESTIMATION_METHODS + VALIDATION_METHODS + ("ensemble",)
    assert keys.NOISE_KINDS == NOISE_KINDS
    assert keys.MODES == MODES and keys.RECIPES == RECIPES
    assert keys.MODEL_CHOICES == MODEL_CHOICES and keys.LR_SCHEDULES == LR_SCHEDULES
    assert keys.UNQUERIED_RULES == UNQUERIED_RULES
    from alr_monai.relabel.readers import CONSENSUS_RULES

    assert keys.CONSENSUS_RULES == CONSENSUS_RULES
    assert keys.TRUSTED_RULES == TRUSTED_RULES and keys.VOG_KEEP == VOG_KEEP
    from alr_monai.data.augment import AUGMENT_ON
    from alr_monai.data.datasets import CACHE_POLICIES, SAMPLERS

    assert keys.AUGMENT_ON == AUGMENT_ON and keys.CACHE_POLICIES == CACHE_POLICIES
    assert keys.SAMPLERS == SAMPLERS
    from alr_monai.relabel.acquire import QUOTA_MODES

    assert keys.QUOTA_MODES == QUOTA_MODES


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("relabel#acquisition", "margn", "did you mean margin"),
        ("max_epochs", "abc", "an integer"),
        ("max_epochs", 0, "out of range"),
        ("simulation#noise_rate", 1.5, "in [0, 1]"),
        ("vog#keep", "middle", "low, high"),
        ("spatial_dims", 4, "2, 3"),
        ("intensity", "log", "'minmax', 'none'"),
        ("image_size", [64, -1], "positive sizes"),
        ("augment", "yes", "true or false"),
    ],
)
def test_bad_values_are_refused_with_what_is_accepted(name, value, words):
    key = {k.name: k for k in KEYS}[name]
    with pytest.raises(KeyError_, match=words.replace("[", r"\[").replace("(", r"\(")):
        key.check(value)


def test_good_values_pass():
    by_name = {k.name: k for k in KEYS}
    assert by_name["coteaching#forget_rate"].check(None) is None
    assert by_name["coteaching#forget_rate"].check("null") is None
    assert by_name["intensity"].check({"window": [40, 400]}) == {"window": [40, 400]}
    assert by_name["augment"].check("false") is False
    assert by_name["learning_rate"].check(1) == 1


def test_check_overrides_names_the_closest_key_and_the_right_command():
    with pytest.raises(KeyError_, match="did you mean --max_epochs"):
        check_overrides({"max_epoch": 2}, ("train",), "train")
    with pytest.raises(KeyError_, match="alr relabel or alr query"):
        check_overrides({"relabel#round_budget": 2}, ("train",), "train")
    with pytest.raises(KeyError_, match="--manifest"):
        check_overrides({"image_size": [32, 32]}, ("train",), "train")
    # Python callers may override wiring keys (strict=False), but values of table keys are still checked.
    assert check_overrides({"train#items": "$[]"}, ("train",), "train", strict=False)
    with pytest.raises(KeyError_):
        check_overrides({"train#items": "$[]", "vog#keep": "x"}, ("train",), "train", strict=False)
    assert {k.name for k in keys_for(("relabel",))} >= {"device", "batch_size", "relabel#acquisition"}


def test_key_module_needs_no_torch():
    # Help must be instant: the key table and the CLI's checks import neither torch nor monai.
    import subprocess
    import sys

    code = "import sys, alr_monai.cli; assert 'torch' not in sys.modules and 'monai' not in sys.modules, sorted(sys.modules)"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, env=_env(root))
    assert result.returncode == 0, result.stderr


def _env(root: Path) -> dict:
    import os

    return {**os.environ, "PYTHONPATH": str(root)}
