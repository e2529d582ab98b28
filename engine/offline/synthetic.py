"""Synthetic, labeled, gateway-shaped transactions for tests, demos, benchmarks and `risk-engine simulate`.

Deterministic for a seed (and the embedded geo database, which vets the generated addresses).

Genuine traffic: users in nine countries, each with one to three cards, one or two devices, a
home (broadband) and a mobile address that geolocate to the user's country with the embedded
database (`engine.geo.default_geo()`), now and then a fresh address from the same networks, and
rarely abroad (travel: a foreign address, still genuine). Users pay merchants (each with an ISO
18245 category, `merchant_category`, whose typical amount scales the user's) at a day/night
rhythm in the user's local time, a bit more at weekends; regulars take most of a user's
payments; channels follow the country (mini programs and QR codes in CN, web and app elsewhere).

Labeled attacks (`label` 1), each with its own `scenario`:

- `card_testing`: a burst of tiny charges on one stolen card, seconds to minutes apart, from a
  foreign hosting address and a throwaway device.
- `account_takeover`: a user's account and card from a new device and a foreign address, a few
  payments several times the user's usual amount.
- `device_farm`: one device (and one hosting address) paying with many different users' cards.
- `geo_mismatch`: a card used by guest checkout from an address in another country, at
  sizeable amounts, no device fingerprint.
- `bust_out`: a card with a steady history suddenly paying 8-20 times its usual amount, from
  its own device and home address (first-party fraud).
- `compromised_merchant`: at night, one merchant account charging many cards from a card dump
  (never seen before) at round amounts, from a handful of hosting addresses.

Attackers use public addresses of hosting networks in another country than the card's (never
the documentation ranges that `rules/lists/blocked_ip_ranges.txt` blocks). The output uses the
`native` column mapping of engine.offline.datasets, plus `merchant_category`, `label` and
`scenario`. Streaming the rows to a live server is `engine.service.traffic`.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

START_MS = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
CHANNELS = ("app", "web", "qr_code", "mini_program")

SCENARIOS = (
    "card_testing",
    "account_takeover",
    "device_farm",
    "geo_mismatch",
    "bust_out",
    "compromised_merchant",
)

# Card country: (share of users, currency, UTC offset in hours, channel weights app/web/qr/mini).
COUNTRY_PROFILE: dict[str, tuple[float, str, int, tuple[int, int, int, int]]] = {
    "CN": (0.42, "CNY", 8, (30, 10, 25, 35)),
    "HK": (0.08, "HKD", 8, (50, 30, 15, 5)),
    "SG": (0.08, "SGD", 8, (50, 35, 12, 3)),
    "JP": (0.08, "JPY", 9, (45, 45, 8, 2)),
    "US": (0.11, "USD", -5, (45, 55, 0, 0)),
    "GB": (0.08, "GBP", 0, (45, 55, 0, 0)),
    "DE": (0.07, "EUR", 1, (40, 60, 0, 0)),
    "FR": (0.05, "EUR", 1, (40, 60, 0, 0)),
    "NL": (0.03, "EUR", 1, (45, 55, 0, 0)),
}
# Approximate value of one major unit in EUR (as rules/rates.yaml), to give amounts a common scale.
EUR_PER_UNIT = {"CNY": 0.13, "HKD": 0.12, "SGD": 0.69, "JPY": 0.0061, "USD": 0.92, "GBP": 1.17, "EUR": 1.0}
MINOR_DIGITS = {"JPY": 0}

# Residential and mobile networks per country (large ISPs); every generated address is also
# checked against the embedded geo database and redrawn if it lands elsewhere.
RESIDENTIAL_NETWORKS: dict[str, tuple[str, ...]] = {
    "CN": ("116.224.0.0/12", "123.112.0.0/12", "183.0.0.0/10", "36.96.0.0/11", "114.80.0.0/12", "58.32.0.0/11"),
    "HK": ("218.102.0.0/16", "112.118.0.0/16", "203.198.0.0/16", "219.76.0.0/14", "42.2.0.0/15"),
    "SG": ("116.86.0.0/15", "203.116.0.0/16", "58.182.0.0/16", "220.255.0.0/16"),
    "JP": ("153.128.0.0/9", "114.144.0.0/12", "180.0.0.0/11"),
    "US": ("24.0.0.0/12", "73.0.0.0/8", "98.0.0.0/12", "108.0.0.0/11", "174.48.0.0/12"),
    "GB": ("81.96.0.0/12", "86.128.0.0/10", "31.48.0.0/13", "109.144.0.0/12"),
    "DE": ("79.192.0.0/10", "84.128.0.0/10", "91.0.0.0/10", "93.192.0.0/10"),
    "FR": ("90.0.0.0/9", "86.192.0.0/11"),
    "NL": ("77.160.0.0/12",),
}
# Hosting and proxy networks attackers rent, by the country they geolocate to.
HOSTING_NETWORKS: dict[str, tuple[str, ...]] = {
    "DE": ("78.46.0.0/15", "5.9.0.0/16", "88.198.0.0/16", "138.201.0.0/16"),
    "US": ("104.131.0.0/16", "45.55.0.0/16", "192.241.128.0/17"),
    "RU": ("95.213.128.0/17", "185.22.152.0/22", "91.200.12.0/22"),
    "VN": ("14.160.0.0/11", "113.160.0.0/11"),
    "NG": ("41.58.0.0/16", "105.112.0.0/12"),
    "KR": ("211.32.0.0/11", "121.128.0.0/10"),
    "UA": ("176.36.0.0/14",),
}

# ISO 18245 merchant category: (share of merchants, amount factor, attack-friendly).
MCC_PROFILE: dict[str, tuple[float, float]] = {
    "5411": (14, 0.8),  # grocery stores, supermarkets
    "5812": (14, 0.7),  # restaurants
    "5814": (10, 0.3),  # fast food
    "5999": (8, 1.0),  # miscellaneous retail
    "5311": (5, 1.5),  # department stores
    "5691": (6, 1.6),  # clothing
    "5732": (4, 4.0),  # electronics
    "4121": (8, 0.4),  # taxis and ride hailing
    "4814": (5, 0.5),  # telecom top-ups
    "5541": (5, 1.0),  # fuel
    "5912": (4, 0.6),  # pharmacies
    "7011": (3, 5.0),  # hotels
    "4511": (2, 8.0),  # airlines
    "5815": (5, 0.2),  # digital goods
    "5944": (1, 6.0),  # jewellery
    "7995": (1, 1.5),  # gambling (high-risk list)
    "4829": (1, 3.0),  # money transfer (high-risk list)
    "6051": (0.5, 3.0),  # quasi-cash (high-risk list)
    "6211": (0.5, 4.0),  # securities (high-risk list)
}
RESALEABLE_MCCS = ("5732", "5944", "5815", "6051", "4829")  # what fraudsters cash out through
TESTING_MCCS = ("5815", "5999", "4814")  # small online merchants where card testers probe

# Share of a day's payments in each local hour 0..23: quiet at night, peaks at lunch and evening.
HOUR_WEIGHTS = (
    1.2,
    0.7,
    0.4,
    0.3,
    0.3,
    0.5,
    1.2,
    3,
    5,
    6,
    6.5,
    7.5,
    8.5,
    7,
    6.5,
    6.5,
    6.5,
    7,
    8,
    8.5,
    8,
    6.5,
    4.5,
    2.5,
)
_HOUR_CUM = list(itertools.accumulate(HOUR_WEIGHTS))


def local_hour(event_time_ms: int, country: str) -> int:
    """The hour of day at the card country's (standard) time, as the generator drew it."""
    return ((event_time_ms // HOUR_MS) + COUNTRY_PROFILE[country][2]) % 24


@dataclass
class _User:
    uid: str
    country: str
    cards: list[str]
    devices: list[str]
    home_ip: str
    mobile_ip: str
    avg_eur: float
    activity: float
    channel_weights: tuple[int, int, int, int]
    regulars: list[int] = field(default_factory=list)


class _Addresses:
    """Draws public addresses from named networks, vetted against the embedded geo database."""

    def __init__(self, rng: random.Random, check: bool = True) -> None:
        self._rng = rng
        self._nets: dict[str, list[ipaddress.IPv4Network]] = {}
        self._geo = None
        if check:
            from engine.geo import default_geo

            self._geo = default_geo()

    def draw(self, country: str, networks: dict[str, tuple[str, ...]]) -> str:
        key = f"{id(networks)}:{country}"
        nets = self._nets.get(key)
        if nets is None:
            nets = self._nets[key] = [ipaddress.IPv4Network(n) for n in networks[country]]
        addr = ""
        for _ in range(8):
            net = self._rng.choice(nets)
            candidate = net.network_address + self._rng.randrange(1, net.num_addresses - 1)
            addr = str(candidate)
            if self._geo is None or self._geo.lookup(candidate).country == country:
                return addr
        return addr


def generate(
    days: int = 30,
    users: int = 300,
    merchants: int = 60,
    per_user_per_day: float = 2.0,
    seed: int = 7,
    *,
    attacks_per_day: float | None = None,
    start_ms: int = START_MS,
    check_geo: bool = True,
) -> list[dict[str, Any]]:
    """Rows in the native schema, sorted by event time, with `merchant_category`, `label` (1 fraud), `scenario`.

    `attacks_per_day`: attack episodes a day (default: one per 100 users, at least 2), each
    drawn from `SCENARIOS`; every scenario occurs at least once when `days` allows.
    `check_geo`: vet addresses with the embedded geo database (off: faster, and no database
    needed, but some addresses may locate elsewhere).
    """
    rng = random.Random(seed)
    addresses = _Addresses(rng, check_geo)
    countries = list(COUNTRY_PROFILE)
    country_cum = list(itertools.accumulate(p[0] for p in COUNTRY_PROFILE.values()))

    # Merchants: a category each, popularity falling off with rank (a few big ones, a long tail).
    mccs = list(MCC_PROFILE)
    mcc_cum = list(itertools.accumulate(p[0] for p in MCC_PROFILE.values()))
    merchant_mcc = [mccs[bisect.bisect(mcc_cum, rng.random() * mcc_cum[-1])] for _ in range(merchants)]
    merchant_cum = list(itertools.accumulate(1.0 / (rank + 1) ** 0.8 for rank in range(merchants)))

    def popular_merchant() -> int:
        return min(bisect.bisect(merchant_cum, rng.random() * merchant_cum[-1]), merchants - 1)

    def merchant_in(categories: Sequence[str]) -> int:
        pool = [m for m, c in enumerate(merchant_mcc) if c in categories]
        return rng.choice(pool) if pool else popular_merchant()

    people: list[_User] = []
    for u in range(users):
        country = countries[min(bisect.bisect(country_cum, rng.random() * country_cum[-1]), len(countries) - 1)]
        n_cards = rng.choices((1, 2, 3), weights=(60, 30, 10))[0]
        n_devices = rng.choices((1, 2), weights=(70, 30))[0]
        people.append(
            _User(
                uid=f"user-{u}",
                country=country,
                cards=[f"card-{u}-{k}" for k in range(n_cards)],
                devices=[f"dev-{u}-{k}" for k in range(n_devices)],
                home_ip=addresses.draw(country, RESIDENTIAL_NETWORKS),
                mobile_ip=addresses.draw(country, RESIDENTIAL_NETWORKS),
                avg_eur=min(rng.lognormvariate(3.2, 0.6), 400.0),  # median ~25 EUR
                activity=rng.gammavariate(2.0, 0.5),  # mean 1: some users pay far more often than others
                channel_weights=COUNTRY_PROFILE[country][3],
                regulars=[popular_merchant() for _ in range(rng.randint(3, 12))],
            )
        )

    rows: list[dict[str, Any]] = []
    seq = 0

    def add(
        t: int,
        country: str,
        user_id: str,
        card: str,
        amount_eur: float,
        device: str,
        ip: str,
        merchant: int,
        channel: str,
        scenario: str,
    ) -> None:
        nonlocal seq
        currency = COUNTRY_PROFILE[country][1]
        digits = MINOR_DIGITS.get(currency, 2)
        amount_minor = max(1, round(amount_eur / EUR_PER_UNIT[currency] * 10**digits))
        rows.append(
            {
                "transaction_id": f"tx-{seq:08d}",
                "event_time_ms": t,
                "amount_minor": amount_minor,
                "currency": currency,
                "user_id": user_id,
                "card_id": card,
                "device_id": device,
                "ip": ip,
                "country": country,
                "merchant_id": f"m-{merchant}",
                "merchant_category": merchant_mcc[merchant],
                "channel": channel,
                "label": 0 if scenario == "genuine" else 1,
                "scenario": scenario,
            }
        )
        seq += 1

    def local_time(day: int, country: str, hour: int | None = None) -> int:
        if hour is None:
            hour = bisect.bisect(_HOUR_CUM, rng.random() * _HOUR_CUM[-1])
        return start_ms + day * DAY_MS + (hour - COUNTRY_PROFILE[country][2]) * HOUR_MS + rng.randrange(HOUR_MS)

    def foreign_hosting(country: str) -> str:
        return addresses.draw(rng.choice([c for c in HOSTING_NETWORKS if c != country]), HOSTING_NETWORKS)

    # Genuine traffic.
    for day in range(days):
        weekend = 1.15 if datetime.fromtimestamp((start_ms + day * DAY_MS) / 1000, UTC).weekday() >= 5 else 1.0
        for user in people:
            rate = per_user_per_day * user.activity * weekend
            for _ in range(int(rng.expovariate(1.0 / rate) + 0.5) if rate > 0 else 0):
                merchant = rng.choice(user.regulars) if rng.random() < 0.7 else popular_merchant()
                amount = rng.lognormvariate(0, 0.5) * user.avg_eur * MCC_PROFILE[merchant_mcc[merchant]][1]
                channel = rng.choices(CHANNELS, weights=user.channel_weights)[0]
                device = user.devices[0] if channel != "web" or len(user.devices) == 1 else user.devices[1]
                where = rng.random()
                if where < 0.015:  # travelling: a foreign residential address, still the user
                    ip = addresses.draw(rng.choice([c for c in countries if c != user.country]), RESIDENTIAL_NETWORKS)
                elif where < 0.10:  # a new address from the home networks (dynamic IPs, cafés, work)
                    ip = addresses.draw(user.country, RESIDENTIAL_NETWORKS)
                else:
                    ip = user.home_ip if channel == "web" or rng.random() < 0.5 else user.mobile_ip
                add(
                    local_time(day, user.country),
                    user.country,
                    user.uid,
                    rng.choice(user.cards),
                    amount,
                    device,
                    ip,
                    merchant,
                    channel,
                    "genuine",
                )

    # Attacks: episodes spread over the days; every scenario at least once.
    per_day = attacks_per_day if attacks_per_day is not None else max(2.0, users / 100)
    total = max(int(per_day * days + 0.5), len(SCENARIOS))
    kinds = list(SCENARIOS) + rng.choices(SCENARIOS, weights=(30, 15, 15, 15, 15, 10), k=total - len(SCENARIOS))
    dump = itertools.count()
    history_from = min(3, days - 1)  # takeovers and bust-outs hit cards with some history
    for episode, kind in enumerate(kinds):
        day = rng.randrange(history_from, days) if kind in ("account_takeover", "bust_out") else rng.randrange(days)
        victim = rng.choice(people)
        if kind == "card_testing":
            t = start_ms + day * DAY_MS + rng.randrange(DAY_MS - HOUR_MS)
            card = rng.choice(victim.cards)
            device, ip = f"dev-ct-{episode}", foreign_hosting(victim.country)
            merchant = merchant_in(TESTING_MCCS)
            for _ in range(rng.randint(5, 14)):
                t += rng.randint(5_000, 90_000)
                if rng.random() < 0.3:
                    merchant = merchant_in(TESTING_MCCS)
                add(t, victim.country, "", card, rng.uniform(0.5, 3.0), device, ip, merchant, "web", kind)
        elif kind == "account_takeover":
            t = start_ms + day * DAY_MS + rng.randrange(DAY_MS - 2 * HOUR_MS)
            device, ip = f"dev-ato-{episode}", foreign_hosting(victim.country)
            for _ in range(rng.randint(1, 4)):
                t += rng.randint(60_000, 1_200_000)
                amount = victim.avg_eur * rng.uniform(5, 15)
                add(
                    t,
                    victim.country,
                    victim.uid,
                    rng.choice(victim.cards),
                    amount,
                    device,
                    ip,
                    merchant_in(RESALEABLE_MCCS),
                    rng.choice(("app", "web")),
                    kind,
                )
        elif kind == "device_farm":
            t = start_ms + day * DAY_MS + rng.randrange(DAY_MS - 8 * HOUR_MS)
            device = f"dev-farm-{episode}"
            ip = foreign_hosting(victim.country)
            for _ in range(rng.randint(4, 9)):
                t += rng.randint(60_000, 2_700_000)
                other = rng.choice(people)
                add(
                    t,
                    other.country,
                    other.uid,
                    rng.choice(other.cards),
                    rng.uniform(50, 400),
                    device,
                    ip,
                    merchant_in(RESALEABLE_MCCS),
                    "app",
                    kind,
                )
        elif kind == "geo_mismatch":
            t = start_ms + day * DAY_MS + rng.randrange(DAY_MS - HOUR_MS)
            ip = foreign_hosting(victim.country)
            card = rng.choice(victim.cards)
            for _ in range(rng.randint(1, 3)):
                t += rng.randint(30_000, 1_800_000)
                amount = max(victim.avg_eur * rng.uniform(3, 10), rng.uniform(150, 900))
                add(t, victim.country, "", card, amount, "", ip, merchant_in(RESALEABLE_MCCS), "web", kind)
        elif kind == "bust_out":
            t = local_time(day, victim.country)
            card = rng.choice(victim.cards)
            for _ in range(rng.randint(2, 5)):
                t += rng.randint(600_000, 4 * HOUR_MS)
                add(
                    t,
                    victim.country,
                    victim.uid,
                    card,
                    victim.avg_eur * rng.uniform(8, 20),
                    victim.devices[0],
                    victim.home_ip,
                    merchant_in(("5732", "5944", "4511", "7011", "5311")),
                    rng.choice(("app", "web")),
                    kind,
                )
        else:  # compromised_merchant: a night of charges on dumped cards through one merchant account
            merchant = popular_merchant() if rng.random() < 0.3 else rng.randrange(merchants)
            t = local_time(day, victim.country, hour=rng.choice((0, 1, 2, 3, 4)))
            ips = [foreign_hosting(victim.country) for _ in range(rng.randint(1, 4))]
            for _ in range(rng.randint(8, 25)):
                t += rng.randint(20_000, 600_000)
                country = rng.choice(countries)
                add(
                    t,
                    country,
                    "",
                    f"card-dump-{next(dump)}",
                    float(rng.choice((50, 100, 150, 200, 250, 300, 500))),
                    "",
                    rng.choice(ips),
                    merchant,
                    "web",
                    kind,
                )
    rows.sort(key=lambda r: (r["event_time_ms"], r["transaction_id"]))
    return rows


def write_parquet(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# --- another schema ---------------------------------------------------------------------------

#: A readable category name per merchant category code, as other data sets spell them.
CATEGORY_NAMES = {
    "5411": "Grocery Store",
    "5812": "Restaurant",
    "5814": "Fast Food",
    "5999": "Misc Retail",
    "5311": "Department Store",
    "5691": "Clothing",
    "5732": "Electronics",
    "4121": "Taxi",
    "4814": "Telecom",
    "5541": "Fuel",
    "5912": "Pharmacy",
    "7011": "Hotel",
    "4511": "Airline",
    "5815": "Digital Goods",
    "5944": "Jewellery",
    "7995": "Gambling",
    "4829": "Money Transfer",
    "6051": "Quasi Cash",
    "6211": "Securities",
}
#: The zone of the other schema's local timestamps.
OTHER_ZONE = "America/New_York"
#: Its timestamp format.
OTHER_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def to_other_schema(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as another data set would hold them: other column names, string categories,
    merchant names with spaces, local time stamps as text and amounts in another unit.

    `trans_num` (id), `trans_time` (local time in `OTHER_ZONE`, `OTHER_TIME_FORMAT`, to the second),
    `amt_thousands` (the amount in thousands of the currency's major unit), `ccy`, `cc_num`,
    `customer`, `device`, `ip_address`, `country_code`, `merchant` (`Shop 12 Grocery Store`: a name
    with spaces), `category` (the merchant category's name, e.g. `Grocery Store`), `channel`,
    `is_fraud` (`yes` or `no`). docs/data.md maps it back with transforms alone.
    """
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(OTHER_ZONE)
    out = []
    for r in rows:
        digits = MINOR_DIGITS.get(r["currency"], 2)
        category = CATEGORY_NAMES[r["merchant_category"]]
        local = datetime.fromtimestamp(r["event_time_ms"] / 1000, zone)
        out.append(
            {
                "trans_num": r["transaction_id"],
                "trans_time": local.strftime(OTHER_TIME_FORMAT),
                "amt_thousands": r["amount_minor"] / 10**digits / 1000,
                "ccy": r["currency"],
                "cc_num": r["card_id"],
                "customer": r["user_id"],
                "device": r["device_id"],
                "ip_address": r["ip"],
                "country_code": r["country"],
                "merchant": f"Shop {r['merchant_id'].removeprefix('m-')} {category}",
                "category": category,
                "channel": r["channel"],
                "is_fraud": "yes" if r["label"] else "no",
            }
        )
    return out


# --- streaming to a live server -------------------------------------------------------------


def shift_to_present(
    rows: Sequence[dict[str, Any]], *, now_ms: int | None = None, lead_ms: int = 60_000
) -> list[dict[str, Any]]:
    """The rows of the last simulated day, moved so the last one happens `lead_ms` before now.

    The server refuses event times more than a day old, so only the final day of a longer
    simulation can be sent live; relative spacing is kept, so windows see realistic velocity.
    """
    if not rows:
        return []
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    # The end of the stream, ignoring the last few stragglers (a bust-out running into the next day).
    last = rows[min(len(rows) - 1, int(len(rows) * 0.999))]["event_time_ms"]
    shift = now_ms - lead_ms - last
    keep_from = last - DAY_MS + 10 * 60_000
    return [{**r, "event_time_ms": r["event_time_ms"] + shift} for r in rows if keep_from <= r["event_time_ms"] <= last]
