"""`risk-engine serve` keeps full garbage collections off the payment path (benchmarks/gc_stalls.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.config import ConfigError, ServeConfig
from engine.service.server import GC_FULL_COLLECTION_EVERY


@pytest.mark.slow
def test_tune_gc_freezes_what_is_loaded_and_defers_full_collections() -> None:
    # In a fresh interpreter: the collector's settings are per process (and the test run's own stay as they are).
    code = (
        "import gc, json; from engine.service.server import tune_gc; before = gc.get_threshold(); tune_gc(); "
        "print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    before, after, frozen = json.loads(out)
    assert after == [before[0], before[1], GC_FULL_COLLECTION_EVERY]  # young generations as before
    assert int(frozen) > 10_000  # the engine's modules, rules and model are out of every collection


@pytest.mark.parametrize(("value", "want"), [("off", False), ("on", True), ("0", False), ("TRUE", True)])
def test_gc_tuning_can_be_turned_off(value: str, want: bool) -> None:
    assert ServeConfig.from_env({"RISK_GC_TUNING": value}).gc_tuning is want
    assert ServeConfig.from_env({}).gc_tuning is True


def test_a_bad_gc_tuning_value_is_named() -> None:
    with pytest.raises(ConfigError, match="RISK_GC_TUNING='sometimes': expected on or off"):
        ServeConfig.from_env({"RISK_GC_TUNING": "sometimes"})
