"""Synthetic, labeled, gateway-shaped transactions for tests, demos and benchmarks.

Deterministic for a seed. Genuine traffic: users with one or two cards and a
home device, IP and country, paying merchants at a day/night rhythm. Labeled
attacks layered on top: card-testing bursts (many tiny charges on a stolen
card), device farms (one device, many cards), and bust-outs (a card suddenly
paying several times its usual amount from a new device). The output uses
the `native` column mapping of engine.offline.datasets.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

START_MS = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
DAY_MS = 86_400_000
CHANNELS = ("app", "web", "qr_code", "mini_program")
COUNTRIES = ("CN", "CN", "CN", "HK", "SG", "US", "GB", "JP")
CURRENCY_OF = {"CN": "CNY", "HK": "HKD", "SG": "SGD", "US": "USD", "GB": "GBP", "JP": "JPY"}


@dataclass
class _User:
    uid: str
    cards: list[str]
    device: str
    ip: str
    country: str
    avg_minor: int


def generate(
    days: int = 30, users: int = 300, merchants: int = 60, per_user_per_day: float = 2.0, seed: int = 7
) -> list[dict[str, Any]]:
    """Rows in the native schema, sorted by event time, with a `label` (1 fraud) and `scenario`."""
    rng = random.Random(seed)
    people = []
    for u in range(users):
        country = rng.choice(COUNTRIES)
        cards = [f"card-{u}-{k}" for k in range(rng.choice((1, 1, 2)))]
        ip = f"{rng.randint(11, 200)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        people.append(_User(f"user-{u}", cards, f"dev-{u}", ip, country, rng.randint(2_000, 30_000)))
    rows: list[dict[str, Any]] = []
    seq = 0

    def add(
        t: int,
        user: _User,
        card: str,
        amount_minor: int,
        device: str,
        ip: str,
        merchant: str,
        channel: str,
        label: int,
        scenario: str,
    ) -> None:
        nonlocal seq
        currency = CURRENCY_OF[user.country]
        if currency == "JPY":
            amount_minor = max(1, amount_minor // 100)
        rows.append(
            {
                "transaction_id": f"tx-{seq:08d}",
                "event_time_ms": t,
                "amount_minor": amount_minor,
                "currency": currency,
                "user_id": user.uid,
                "card_id": card,
                "device_id": device,
                "ip": ip,
                "country": user.country,
                "merchant_id": merchant,
                "channel": channel,
                "label": label,
                "scenario": scenario,
            }
        )
        seq += 1

    for day in range(days):
        for user in people:
            for _ in range(int(rng.expovariate(1.0 / per_user_per_day) + 0.5)):
                hour = rng.choices(
                    range(24), weights=[1, 1, 1, 1, 1, 1, 2, 4, 6, 7, 7, 8, 8, 7, 7, 7, 7, 8, 9, 9, 8, 6, 4, 2]
                )[0]
                t = START_MS + day * DAY_MS + hour * 3_600_000 + rng.randrange(3_600_000)
                amount = max(100, int(rng.lognormvariate(0, 0.5) * user.avg_minor))
                add(
                    t,
                    user,
                    rng.choice(user.cards),
                    amount,
                    user.device,
                    user.ip,
                    f"m-{rng.randrange(merchants)}",
                    rng.choice(CHANNELS),
                    0,
                    "genuine",
                )
        # Attacks, a few per day.
        for _ in range(2):
            victim = rng.choice(people)
            t = START_MS + day * DAY_MS + rng.randrange(DAY_MS - 3_600_000)
            device, ip = f"dev-x{seq}", f"203.0.113.{rng.randint(1, 254)}"
            for k in range(rng.randint(5, 9)):  # card testing: tiny charges, minutes apart
                add(
                    t + k * rng.randint(20_000, 90_000),
                    victim,
                    victim.cards[0],
                    rng.randint(50, 300),
                    device,
                    ip,
                    f"m-{rng.randrange(merchants)}",
                    "web",
                    1,
                    "card_testing",
                )
        farm_device, farm_ip = f"dev-farm{day}", f"198.51.100.{rng.randint(1, 254)}"
        t = START_MS + day * DAY_MS + rng.randrange(DAY_MS - 7_200_000)
        for k in range(rng.randint(4, 7)):  # device farm: one device, many cards
            victim = rng.choice(people)
            add(
                t + k * rng.randint(60_000, 900_000),
                victim,
                victim.cards[-1],
                rng.randint(5_000, 50_000),
                farm_device,
                farm_ip,
                f"m-{rng.randrange(merchants)}",
                "app",
                1,
                "device_farm",
            )
        if day >= 7:
            victim = rng.choice(people)
            t = START_MS + day * DAY_MS + rng.randrange(DAY_MS)
            add(
                t,
                victim,
                victim.cards[0],
                victim.avg_minor * rng.randint(8, 20),
                f"dev-new{seq}",
                victim.ip,
                f"m-{rng.randrange(merchants)}",
                "app",
                1,
                "bust_out",
            )
    rows.sort(key=lambda r: (r["event_time_ms"], r["transaction_id"]))
    return rows


def write_parquet(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
