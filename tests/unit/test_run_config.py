"""A run's config hash: equal settings hash equal, whatever their spelling."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from tests.helpers import CONFIG_VALUES, CONFIGS

from egregora.database.runs.config import canonical_json, config_hash


def _reordered(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {k: _reordered(value[k], rng) for k in keys}
    if isinstance(value, list):
        return [_reordered(v, rng) for v in value]
    return value


def _ints_as_floats(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _ints_as_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints_as_floats(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@given(CONFIGS)
def test_equal_configs_hash_equal(config: dict[str, Any]) -> None:
    assert config_hash(copy.deepcopy(config)) == config_hash(config)
    # The stored form hashes like the original: a run's hash can be recomputed from it.
    assert config_hash(json.loads(canonical_json(config))) == config_hash(config)


@given(CONFIGS, st.randoms(use_true_random=False))
def test_key_order_does_not_change_the_hash(config: dict[str, Any], rng: random.Random) -> None:
    assert config_hash(_reordered(config, rng)) == config_hash(config)


@given(CONFIGS)
def test_one_and_one_point_zero_hash_the_same(config: dict[str, Any]) -> None:
    assert config_hash(_ints_as_floats(config)) == config_hash(config)
    assert config_hash({"n": 1}) == config_hash({"n": 1.0})
    assert config_hash({"n": 1}) != config_hash({"n": 1.5})


@given(CONFIGS, CONFIG_VALUES)
def test_a_changed_setting_changes_the_hash(config: dict[str, Any], value: Any) -> None:
    changed = {**config, "extra setting": value} if "extra setting" not in config else {}
    assert config_hash(changed) != config_hash(config)
