"""The traffic simulator (engine.offline.synthetic, `risk-engine simulate`): determinism, scenarios,
cardinalities, geolocated addresses, the day/night rhythm, and streaming to a live server."""

from __future__ import annotations

import ipaddress
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from engine.cli import main
from engine.geo import default_geo
from engine.offline.datasets import PRESETS, read_dataset
from engine.offline.synthetic import (
    CHANNELS,
    HOSTING_NETWORKS,
    RESIDENTIAL_NETWORKS,
    SCENARIOS,
    generate,
    local_hour,
    shift_to_present,
)
from engine.service.convert import to_transaction
from engine.service.traffic import to_request
from engine.validation import Limits, validate


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return generate(days=14, users=400, merchants=80, seed=11)


def _country_of(ip: str) -> str:
    geo = default_geo()
    assert geo is not None
    return geo.lookup(ipaddress.ip_address(ip)).country


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    a = generate(days=4, users=120, seed=5)
    assert a == generate(days=4, users=120, seed=5)
    assert a != generate(days=4, users=120, seed=6)


def test_every_scenario_present_and_labeled(rows: list[dict[str, Any]]) -> None:
    counts = Counter(r["scenario"] for r in rows)
    assert set(counts) == {"genuine", *SCENARIOS}
    assert all(r["label"] == (r["scenario"] != "genuine") for r in rows)
    assert 0.005 < sum(r["label"] for r in rows) / len(rows) < 0.08
    # Even a one-day simulation holds every attack.
    assert {r["scenario"] for r in generate(days=1, users=50)} == {"genuine", *SCENARIOS}


def test_rows_sorted_unique_and_in_the_native_schema(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    times = [r["event_time_ms"] for r in rows]
    assert times == sorted(times)
    assert len({r["transaction_id"] for r in rows}) == len(rows)
    assert all(len(r["merchant_category"]) == 4 and r["merchant_category"].isdigit() for r in rows)
    assert all(r["amount_minor"] > 0 for r in rows)
    path = tmp_path / "sim.parquet"
    assert main(["simulate", "--out", str(path), "--days", "3", "--users", "60", "--seed", "2"]) == 0
    table = pq.read_table(path)
    assert {"merchant_category", "scenario", "label"} <= set(table.column_names)
    data = read_dataset(path, PRESETS["native"])
    assert len(data.transactions) == table.num_rows and data.labels is not None


def test_cardinalities(rows: list[dict[str, Any]]) -> None:
    def distinct(key: str, scenario: str | None = "genuine") -> int:
        return len({r[key] for r in rows if scenario is None or r["scenario"] == scenario} - {""})

    users = distinct("user_id")
    assert users >= 380
    assert 1.2 * users < distinct("card_id") < 2.0 * users  # one to three cards each
    assert 1.1 * users < distinct("device_id") < 1.6 * users  # a phone, sometimes a laptop too
    assert distinct("ip") > 2.5 * users  # home, mobile, and fresh addresses now and then
    assert distinct("merchant_id", None) >= 64
    assert distinct("merchant_category", None) >= 10
    assert distinct("country") == 9
    assert {r["channel"] for r in rows} == set(CHANNELS)
    merchants = Counter(r["merchant_id"] for r in rows if r["scenario"] == "genuine")
    top, *_, bottom = sorted(merchants.values(), reverse=True)
    assert top > 10 * bottom  # a few large merchants, a long tail


def test_genuine_addresses_geolocate_home_and_attacks_abroad(rows: list[dict[str, Any]]) -> None:
    genuine = [r for r in rows if r["scenario"] == "genuine"]
    home = sum(_country_of(r["ip"]) == r["country"] for r in genuine)
    assert home / len(genuine) > 0.97
    for scenario in ("card_testing", "account_takeover", "device_farm", "geo_mismatch", "compromised_merchant"):
        attacks = [r for r in rows if r["scenario"] == scenario]
        abroad = sum(_country_of(r["ip"]) not in ("", r["country"]) for r in attacks)
        assert abroad / len(attacks) > 0.9, scenario
    # No documentation ranges: the shipped blocked_ip_range rule must earn its hits.
    docs = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
    assert not any(ipaddress.ip_address(r["ip"]) in net for r in rows for net in docs)


@pytest.mark.parametrize("table", [RESIDENTIAL_NETWORKS, HOSTING_NETWORKS], ids=["residential", "hosting"])
def test_network_tables_geolocate_to_their_country(table: dict[str, tuple[str, ...]]) -> None:
    rng = random.Random(1)
    for country, networks in table.items():
        for cidr in networks:
            net = ipaddress.ip_network(cidr)
            sample = [net.network_address + rng.randrange(net.num_addresses) for _ in range(100)]
            share = sum(_country_of(str(a)) == country for a in sample) / len(sample)
            assert share >= 0.9, (country, cidr, share)


def test_day_night_rhythm_in_local_time(rows: list[dict[str, Any]]) -> None:
    hours = Counter(local_hour(r["event_time_ms"], r["country"]) for r in rows if r["scenario"] == "genuine")
    night = hours[2] + hours[3] + hours[4]
    day = hours[11] + hours[12] + hours[13]
    assert night < 0.1 * day, hours
    assert max(hours, key=lambda h: hours[h]) in range(10, 21)


def test_live_rows_are_valid_requests(rows: list[dict[str, Any]]) -> None:
    live = shift_to_present(rows)
    assert live and live[-1]["event_time_ms"] - live[0]["event_time_ms"] < 86_400_000
    limits = Limits()
    now_ms = int(time.time() * 1000)
    for row in live[:: max(len(live) // 500, 1)]:
        txn = to_transaction(to_request(row, "p-"), limits)
        validate(txn, limits, now_ms=now_ms)
        assert txn.merchant_category == row["merchant_category"]


def test_simulate_streams_to_a_live_server(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--target", f"127.0.0.1:{server.port}", "--rate", "400", "--count", "150"]
    assert main([*argv, "--days", "1", "--users", "200"]) == 0
    out = capsys.readouterr().out
    assert "sent 150:" in out and "errors none" in out


def test_simulate_needs_exactly_one_destination(tmp_path: Path) -> None:
    assert main(["simulate"]) == 2
    assert main(["simulate", "--out", str(tmp_path / "x.parquet"), "--target", "127.0.0.1:1"]) == 2
