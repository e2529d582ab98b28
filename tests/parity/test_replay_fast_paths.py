"""The fast paths of replay give exactly the answers of the plain paths.

- `Pipeline.score_batch` (one model call per batch) equals `Pipeline.score`
  called on each transaction in turn: decisions, scores, reasons, features,
  every field, refusals, retries and conflicts; `replay` equals a loop of
  `score`.
- The in-process store's in-order fast path (appending) agrees with Redis on
  streams that are mostly in time order, with late events, retries and ties.
- The enricher's cached time-zone offsets give the hour and weekday of
  `datetime.fromtimestamp`, across daylight-saving and other offset changes.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
import os
import random
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.enrich import Enricher, Money
from engine.model.predictor import Model, load_model
from engine.offline.datasets import PRESETS, ColumnMapping, read_dataset, table_to_dataset
from engine.offline.replay import (
    LabelEvent,
    PlaybackStore,
    ReplayStats,
    _RecordingStore,
    label_events,
    replay,
    replay_store,
)
from engine.pipeline import IdempotencyConflict, InvalidTransaction, Pipeline, Scored
from engine.rules import load_ruleset
from engine.transaction import Transaction
from engine.windows.memory import MemoryStore
from engine.windows.redis_store import RedisStore
from tests.support import ROOT, RULES
from tests.support.windows import PLAN, T0, event_fields

MIN = 60_000


def _plain(value: Any) -> Any:
    """A comparable form: NaN becomes a marker (NaN != NaN), containers recursively."""
    if isinstance(value, float) and math.isnan(value):
        return "<nan>"
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _answer(outcome: Scored | Exception) -> Any:
    """Everything an answer carries except the time it took."""
    if isinstance(outcome, Exception):
        return (type(outcome).__name__, str(outcome))
    r = replace(outcome.result, elapsed_us=0)
    return (
        "scored",
        outcome.replayed,
        _plain(
            [
                r.transaction_id,
                r.decision,
                r.score,
                r.reasons,
                r.ruleset_version,
                r.model_version,
                r.degraded,
                r.features,
                r.shadow,
            ]
        ),
        _plain(outcome.fields),
    )


def _one_by_one(pipeline: Pipeline, transactions: list[Transaction]) -> list[Any]:
    out = []
    for txn in transactions:
        try:
            out.append(_answer(pipeline.score(txn)))
        except (InvalidTransaction, IdempotencyConflict) as exc:
            out.append(_answer(exc))
    return out


def _batched(pipeline: Pipeline, transactions: list[Transaction], size: int) -> list[Any]:
    out = []
    for first in range(0, len(transactions), size):
        out.extend(_answer(a) for a in pipeline.score_batch(transactions[first : first + size]))
    return out


def _awkward_stream(synthetic_data: Path, n: int = 1_500) -> list[Transaction]:
    """Synthetic traffic plus refusals, retries, reused ids, late events and odd IP spellings."""
    rng = random.Random(11)
    base = read_dataset(synthetic_data, PRESETS["native"]).transactions[:n]
    stream: list[Transaction] = []
    for k, txn in enumerate(base):
        stream.append(txn)
        roll = rng.random()
        if roll < 0.03:
            stream.append(replace(txn, currency="XYZ", transaction_id=f"bad-{k}"))  # refused
        elif roll < 0.06:
            stream.append(txn)  # a retry, same content
        elif roll < 0.08:
            stream.append(replace(txn, amount_minor=txn.amount_minor + 1))  # id reused, other content
        elif roll < 0.12:
            late = replace(txn, transaction_id=f"late-{k}", event_time_ms=txn.event_time_ms - rng.randrange(20 * MIN))
            stream.append(late)  # out of order, within and beyond the allowed lateness
        elif roll < 0.14 and txn.ip:
            stream.append(replace(txn, transaction_id=f"v6-{k}", ip=f"::ffff:{txn.ip}"))  # IPv4-mapped spelling
        elif roll < 0.15:
            stream.append(replace(txn, transaction_id=f"tie-{k}"))  # the same millisecond, another id
    return stream


@pytest.fixture(scope="module")
def ruleset_and_model(trained_registry: Path) -> tuple[Any, Model]:
    ruleset = load_ruleset(RULES)
    return ruleset, load_model(trained_registry, ruleset)


@pytest.mark.parametrize("size", [1, 7, 256, 100_000])
def test_score_batch_equals_score_one_by_one(
    synthetic_data: Path, ruleset_and_model: tuple[Any, Model], size: int
) -> None:
    ruleset, model = ruleset_and_model
    stream = _awkward_stream(synthetic_data)

    def pipeline() -> Pipeline:
        return Pipeline(ruleset, model, MemoryStore(remember_responses=False), check_clock=False, record=False)

    want = _one_by_one(pipeline(), stream)
    got = _batched(pipeline(), stream, size)
    assert got == want
    kinds = {a[0] for a in want}
    assert kinds == {"scored", "InvalidTransaction"}
    assert any(a[0] == "scored" and a[2][2] != "<nan>" and a[2][2] > 0.5 for a in want)  # the model mattered
    assert any("late-" in str(a[2][0]) for a in want if a[0] == "scored")


def test_score_batch_with_records_matches_score(synthetic_data: Path, ruleset_and_model: tuple[Any, Model]) -> None:
    """With records on, a retry inside the batch is answered from the record, as `score` answers it."""
    ruleset, model = ruleset_and_model
    stream = _awkward_stream(synthetic_data, 600)

    def pipeline() -> Pipeline:
        return Pipeline(ruleset, model, MemoryStore(), check_clock=False, record=True)

    want = _one_by_one(pipeline(), stream)
    got = _batched(pipeline(), stream, 64)
    assert got == want
    assert any(a[0] == "scored" and a[1] for a in want)  # replayed retries
    assert any(a[0] == "IdempotencyConflict" for a in want)


def test_score_batch_with_a_failing_model_degrades_each_row_as_score(
    synthetic_data: Path, ruleset_and_model: tuple[Any, Model]
) -> None:
    ruleset, model = ruleset_and_model
    broken = replace(model, features=model.features[:-1])  # LightGBM refuses the rows
    stream = read_dataset(synthetic_data, PRESETS["native"]).transactions[:300]
    seen: list[tuple[str, str]] = []

    def pipeline() -> Pipeline:
        return Pipeline(
            ruleset,
            broken,
            MemoryStore(remember_responses=False),
            check_clock=False,
            record=False,
            on_degraded=lambda cause, detail, kind: seen.append((cause, detail)),
        )

    want = _one_by_one(pipeline(), stream)
    n = len(seen)
    got = _batched(pipeline(), stream, 100)
    assert got == want
    assert seen[n:] == seen[:n]  # the same degradations reported, in the same order
    assert all(a[2][6] for a in want)  # degraded


def test_score_batch_without_a_model_gives_features_only(synthetic_data: Path) -> None:
    ruleset = load_ruleset(RULES)
    stream = _awkward_stream(synthetic_data, 400)

    def pipeline() -> Pipeline:
        return Pipeline(ruleset, None, MemoryStore(remember_responses=False), check_clock=False, record=False)

    assert _batched(pipeline(), stream, 50) == _one_by_one(pipeline(), stream)


@pytest.mark.parametrize("parallel", [False, True], ids=["one process", "windows pass forked"])
def test_replay_yields_what_score_gives_one_by_one(
    synthetic_data: Path, ruleset_and_model: tuple[Any, Model], parallel: bool
) -> None:
    ruleset, model = ruleset_and_model
    stream = _awkward_stream(synthetic_data, 1_000)
    pipeline = Pipeline(ruleset, model, MemoryStore(remember_responses=False), check_clock=False, record=False)
    want = [(i, a) for i, a in enumerate(_one_by_one(pipeline, stream)) if a[0] == "scored"]
    stats = ReplayStats()
    answers = replay(stream, ruleset, model, stats, batch_size=97, parallel=parallel, explain=True)
    got = [(i, _answer(s)) for i, s in answers]
    assert got == want
    assert stats.scored == len(want)
    assert stats.rejected == len(stream) - len(want) > 0
    assert stats.first_errors and stats.first_errors[0].startswith("bad-")


def test_replay_without_explanations_differs_only_in_contributions(
    synthetic_data: Path, trained_registry: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "rules"
    shutil.copytree(RULES, folder)
    (folder / "thresholds.yaml").write_text("model:\n  review_at: 0.0\n")  # the model reviews every answer
    (folder / "tests.yaml").unlink()  # its expectations assume the shipped thresholds
    ruleset = load_ruleset(folder)
    model = load_model(trained_registry, ruleset)
    stream = read_dataset(synthetic_data, PRESETS["native"]).transactions[:2_000]
    explained = [s.result for _, s in replay(stream, ruleset, model, explain=True)]
    plain = [s.result for _, s in replay(stream, ruleset, model)]  # the default: no explanations
    with_contributions = [r for r in explained if any(reason.contributions for reason in r.reasons)]
    assert with_contributions  # the model did review or deny some
    assert all(not reason.contributions for r in plain for reason in r.reasons)

    def without_contributions(r: Any) -> Any:
        return _plain(replace(r, elapsed_us=0, reasons=tuple(replace(x, contributions=()) for x in r.reasons)))

    assert [without_contributions(r) for r in plain] == [without_contributions(r) for r in explained]


def _labeled(synthetic_data: Path, ruleset: Any) -> tuple[list[Transaction], list[LabelEvent]]:
    dataset = read_dataset(synthetic_data, PRESETS["native"])
    assert dataset.labels is not None
    return dataset.transactions, label_events(dataset.transactions, dataset.labels, dataset.label_times_ms, ruleset)


def test_parallel_replay_with_labels_equals_one_process(
    synthetic_data: Path, ruleset_and_model: tuple[Any, Model]
) -> None:
    """Windows pass forked or not: the same answers and fields, labels fed at the same points."""
    ruleset, model = ruleset_and_model
    transactions, events = _labeled(synthetic_data, ruleset)
    assert len(events) > 100  # the shipped rules count fraud labels per merchant
    runs = []
    for parallel in (False, True):
        stats = ReplayStats()
        runs.append(
            (
                [
                    (i, _answer(s))
                    for i, s in replay(
                        transactions, ruleset, model, stats, labels=events, batch_size=500, parallel=parallel
                    )
                ],
                stats.labels,
            )
        )
    assert runs[0] == runs[1]
    assert any(a[3]["merchant_frauds_known_30d"] > 0 for _, a in runs[0][0])  # labels did reach the windows


def _fail_after(calls: int, how: str) -> Any:
    real = _RecordingStore.apply
    seen = itertools.count()

    def apply(self: _RecordingStore, *args: Any) -> Any:
        if next(seen) == calls:
            if how == "exit":
                os._exit(3)  # the windows pass dies without a word
            raise ValueError("store broke")
        return real(self, *args)

    return apply


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_a_failing_windows_pass_fails_the_replay_instead_of_hanging(
    synthetic_data: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    ruleset = load_ruleset(RULES)
    transactions = read_dataset(synthetic_data, PRESETS["native"]).transactions[:3_000]
    monkeypatch.setattr(_RecordingStore, "apply", _fail_after(1_500, how))  # the forked pass inherits it
    got = 0
    with pytest.raises(RuntimeError, match="windows pass") as caught:
        for _ in replay(transactions, ruleset, None, batch_size=256, parallel=True):
            got += 1
    # Answers come in whole batches of 256, and none after the failure (at the 1,500th call).
    # A pass that raises sends every batch before the failing one; one that dies at once
    # loses the batches still queued for its sender thread (how many: a matter of timing).
    assert got % 256 == 0
    assert got == 1_280 if how == "raise" else got <= 1_280
    assert ("store broke" in str(caught.value)) == (how == "raise")
    assert ("code 3" in str(caught.value)) == (how == "exit")
    assert not mp.active_children()


def _die_in_the_middle_of_a_batch(conn: Any) -> None:
    """A windows pass that dies while sending: a message's length, a few of its bytes, then exit."""
    os.write(conn.fileno(), (1_000).to_bytes(4, "big", signed=True) + b"\x80\x05partial")
    os._exit(3)


def test_a_windows_pass_dying_in_the_middle_of_a_batch_fails_the_replay_clearly() -> None:
    """The scoring side reads an incomplete message (multiprocessing raises OSError, not
    EOFError): the replay fails with the windows pass's exit code, never with a bare OSError."""
    ctx = mp.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_die_in_the_middle_of_a_batch, args=(sender,), daemon=True)
    process.start()
    sender.close()
    process.join(10)
    store = PlaybackStore(receiver, process)
    with pytest.raises(RuntimeError, match=r"windows pass ended before replay did \(exit code 3\)"):
        store._receive()
    receiver.close()


def test_abandoning_a_parallel_replay_stops_its_windows_pass(synthetic_data: Path) -> None:
    ruleset = load_ruleset(RULES)
    transactions = read_dataset(synthetic_data, PRESETS["native"]).transactions[:5_000]
    run = replay(transactions, ruleset, None, batch_size=256, parallel=True)
    next(run)
    assert len(mp.active_children()) == 1
    run.close()
    assert not mp.active_children()


def test_fingerprints_are_skipped_only_when_nothing_reads_them() -> None:
    assert MemoryStore(remember_responses=False).uses_fingerprints is False
    ruleset = load_ruleset(RULES)
    # A store that keeps records still tells a reused id from a retry when responses are not recorded.
    pipe = Pipeline(ruleset, None, MemoryStore(), check_clock=False, record=False)
    txn = Transaction("fp-1", T0, 1_000, "EUR", card_id="c1")
    pipe.score(txn)
    pipe.score(txn)  # a retry: fine
    with pytest.raises(IdempotencyConflict):
        pipe.score(replace(txn, amount_minor=1_001))


# In time order most of the time: the store's append path; sometimes late, tied or retried.
steps = st.lists(
    st.tuples(
        st.sampled_from(["next", "next", "next", "same_ms", "same_ms", "late", "retry"]),
        st.sampled_from([0, 1, 1_000, MIN, 5 * MIN, 5 * MIN + 1, 30 * MIN]),  # gap forward, or how late
        st.sampled_from(["c1", "c2"]),
        st.sampled_from(["d1", "d2", ""]),
        st.integers(0, 10**6),
    ),
    min_size=1,
    max_size=60,
)
_runs = itertools.count()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=steps)
def test_in_order_streams_agree_with_redis(redis_url: tuple[str, str], stream: list[tuple]) -> None:
    url, prefix = redis_url
    redis_store = RedisStore(url, prefix=f"{prefix}-order-{next(_runs)}", budget_s=2.0)
    memory = MemoryStore(remember_responses=False)
    now = T0
    sent: list[tuple[str, int, dict[str, object]]] = []
    try:
        for kind, delta, card, device, amount in stream:
            if kind == "retry" and sent:
                txid, t, fields = sent[amount % len(sent)]
            else:
                if kind == "next":
                    now += delta
                t = now - delta if kind == "late" else now
                k = len(sent)
                txid = f"t{k * 7919 % 101:03d}-{k}"  # ids in another order than arrival, for ties
                fields = event_fields(card, device, amount)
                sent.append((txid, t, fields))
            answers = [
                PLAN.finish(store.apply(PLAN, PLAN.bind(txid, t, fields), f"fp-{txid}").raw)
                for store in (memory, redis_store)
            ]
            assert answers[0] == answers[1], (kind, txid, t)
    finally:
        redis_store.close()


def test_idle_series_of_a_shorter_group_expire_after_a_longer_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store skips its idle walk until the soonest expiry, also when a shorter group is written later."""
    import engine.windows.memory as memory

    clock = [1000.0]
    monkeypatch.setattr(memory.time, "monotonic", lambda: clock[0])
    store = MemoryStore(max_event_delay_s=10.0)

    def count(txid: str, t: int, device: str) -> tuple[float, float]:
        fields = event_fields("c", device, 1)
        w = PLAN.finish(store.apply(PLAN, PLAN.bind(txid, t, fields), "").raw)
        return w["card_count_1h"], w["pair_count_5m"]

    assert count("a", T0, "d") == (1, 1)  # card series retention 62 min, pair series 7 min
    clock[0] += 60
    assert count("b", T0 + 1, "d") == (2, 2)
    clock[0] += 7 * 60 + 10 + 1  # the pair series idle past 7 min + 10 s, the card series not
    assert count("c", T0 + 2, "d") == (3, 1)


def test_a_store_told_ids_are_new_answers_as_one_that_indexes_them(synthetic_data: Path) -> None:
    """new_ids=True drops the id index: exact when no id repeats (late events, ties and drops included)."""
    ruleset = load_ruleset(RULES)
    stream = list({t.transaction_id: t for t in _awkward_stream(synthetic_data, 3_000)}.values())  # each id once
    assert any(t.transaction_id.startswith("late-") for t in stream)
    assert replay_store(stream, ())._new_ids
    answers = []
    for store in (MemoryStore(remember_responses=False), replay_store(stream, ())):
        pipeline = Pipeline(ruleset, None, store, check_clock=False, record=False)
        answers.append(_one_by_one(pipeline, stream))
    assert answers[0] == answers[1]


def test_a_replay_indexes_ids_when_one_repeats(synthetic_data: Path) -> None:
    stream = read_dataset(synthetic_data, PRESETS["native"]).transactions[:100]
    assert replay_store(stream, ())._new_ids
    assert not replay_store([*stream, stream[5]], ())._new_ids  # a repeated transaction id
    assert not replay_store(stream, [(0, 3, "fraud"), (1, 3, "genuine")])._new_ids  # two labels of one transaction
    assert not replay_store(
        [*stream, replace(stream[0], transaction_id=f"label {stream[1].transaction_id}")], ()
    )._new_ids


def test_a_replay_store_keeps_idle_series(monkeypatch: pytest.MonkeyPatch) -> None:
    """expire_idle=False: wall-clock idleness drops nothing; event time still does."""
    import engine.windows.memory as memory

    clock = [1000.0]
    monkeypatch.setattr(memory.time, "monotonic", lambda: clock[0])
    store = MemoryStore(remember_responses=False, max_event_delay_s=10.0, expire_idle=False)

    def count(txid: str, t: int) -> tuple[float, float]:
        fields = event_fields("c", "d", 1)
        w = PLAN.finish(store.apply(PLAN, PLAN.bind(txid, t, fields), "").raw)
        return w["card_count_1h"], w["pair_count_5m"]

    assert count("a", T0) == (1, 1)
    clock[0] += 86_400  # a day of wall clock: both series would have expired in a live store
    assert count("b", T0 + 1) == (2, 2)
    assert count("c", T0 + 6 * MIN) == (3, 1)  # the pair window is 5 minutes of event time


@pytest.mark.parametrize(
    "zone",
    [
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",  # 30-minute daylight saving
        "Asia/Kathmandu",  # +05:45
        "America/St_Johns",  # -03:30, changes at local times that are not whole UTC hours
        "Pacific/Chatham",  # +12:45 / +13:45
        "Africa/Casablanca",  # daylight saving suspended for Ramadan
        "Europe/Amsterdam",  # +00:19:32 until 1937, then +00:20
        "Asia/Shanghai",
    ],
)
def test_local_hour_and_weekday_match_datetime(zone: str) -> None:
    enricher = Enricher(Money("EUR", {}), zone)
    tz = ZoneInfo(zone)

    def want(ms: int) -> tuple[int, int]:
        local = datetime.fromtimestamp(ms / 1000.0, tz)
        return local.hour, local.weekday()

    def offset(ms: int) -> Any:
        return datetime.fromtimestamp(ms / 1000.0, tz).utcoffset()

    instants: list[int] = []
    day = 86_400_000
    for start_year, end_year in ((1935, 1941), (1985, 1987), (2017, 2027)):
        first = int(datetime(start_year, 1, 1, tzinfo=UTC).timestamp() * 1000)
        last = int(datetime(end_year, 1, 1, tzinfo=UTC).timestamp() * 1000)
        for lo in range(first, last, day):
            hi = lo + day
            if offset(lo) == offset(hi):
                continue
            while hi - lo > 1:  # the first millisecond of the new offset
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == offset(lo) else (lo, mid)
            instants += [hi + d for d in (-3_600_001, -3_600_000, -60_000, -1_000, -1, 0, 1, 1_000, 60_000, 3_600_000)]
    if zone != "UTC":
        assert instants  # the scan found the zone's changes
    rng = random.Random(zone)
    instants += [rng.randrange(1, 4_102_444_800_000) for _ in range(20_000)]
    instants += [k * 3_600_000 + d for k in range(420_000, 420_100) for d in (-1, 0, 1)]  # hour edges
    for ms in instants:
        assert enricher.local_hour_and_weekday(ms) == want(ms), ms


def _reference_transactions(rows: list[dict[str, Any]], mapping: ColumnMapping) -> list[Transaction]:
    """Row by row, the plain way: what `table_to_dataset` must give."""
    from engine.iso import CURRENCY_EXPONENTS
    from engine.transaction import Channel

    def text(row: dict[str, Any], column: str | None) -> str:
        value = None if column is None else row[column]
        return "" if value is None else str(value)

    out = []
    for row in sorted(rows, key=lambda r: r["t"]):  # stable: ties keep file order
        currency = text(row, mapping.currency) if mapping.currency else mapping.default_currency
        amount = float(row[mapping.amount])
        if mapping.amount_in_minor_units:
            minor = int(amount)
        else:
            minor = round(amount * 10 ** CURRENCY_EXPONENTS.get(currency, 2))
        channels = {c.value: c for c in Channel}
        out.append(
            Transaction(
                transaction_id=text(row, mapping.transaction_id),
                event_time_ms=row["t"],
                amount_minor=minor,
                currency=currency,
                user_id=text(row, mapping.user_id),
                card_id=text(row, mapping.card_id),
                device_id=text(row, mapping.device_id),
                ip=text(row, mapping.ip),
                country=text(row, mapping.country),
                merchant_id=text(row, mapping.merchant_id),
                channel=channels.get(text(row, mapping.channel).lower(), Channel.UNSPECIFIED),
                attributes=tuple((k, text(row, c)) for k, c in mapping.extra.items() if text(row, c)),
            )
        )
    return out


@pytest.mark.parametrize("minor_units", [False, True])
@pytest.mark.parametrize("one_currency", [False, True])
def test_table_to_dataset_matches_row_by_row(minor_units: bool, one_currency: bool) -> None:
    rng = random.Random(5)
    halves = [0.005, 0.015, 0.125, 2.675, 1.005, 0.5, 1.5, 2.5]  # rounding edges in major units
    rows = [
        {
            "id": 1_000 + k,
            "t": T0 + rng.randrange(50) * 1_000,  # many ties
            "amt": rng.choice(halves) * rng.choice([1, 10, 1000]) if not minor_units else float(rng.randrange(10**6)),
            "cur": "EUR" if one_currency else rng.choice(["EUR", "JPY", "KWD", "USD"]),
            "card": rng.choice([None, 7, 8]),
            "chan": rng.choice(["APP", "web", "fax", None]),
            "mcc": rng.choice(["", "5812", None]),
        }
        for k in range(500)
    ]
    mapping = ColumnMapping(
        transaction_id="id",
        event_time="t",
        amount="amt",
        amount_in_minor_units=minor_units,
        currency="cur",
        card_id="card",
        channel="chan",
        label="lab",
        extra={"mcc": "mcc"},
    )
    table = pa.Table.from_pylist([{**r, "lab": rng.choice([0, 1, None])} for r in rows])
    dataset = table_to_dataset(table, mapping)
    assert dataset.transactions == _reference_transactions(rows, mapping)
    labels = [r["lab"] for r in sorted(table.to_pylist(), key=lambda r: r["t"])]
    assert dataset.labels is not None
    assert [None if math.isnan(x) else int(x) for x in dataset.labels] == labels


def test_replay_pauses_the_cycle_collector_only_while_it_runs(synthetic_data: Path) -> None:
    import gc

    ruleset = load_ruleset(RULES)
    stream = read_dataset(synthetic_data, PRESETS["native"]).transactions[:300]
    assert gc.isenabled()
    running = replay(stream, ruleset, None, batch_size=50)
    next(running)
    assert not gc.isenabled()
    running.close()  # abandoned half-way
    assert gc.isenabled()
    assert len(list(replay(stream, ruleset, None))) == 300
    assert gc.isenabled()
    gc.disable()
    try:
        list(replay(stream, ruleset, None))
        assert not gc.isenabled()  # left as it was
    finally:
        gc.enable()


@pytest.mark.parametrize("name", ["user_id", "card_id", "device_id", "merchant_id"])
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("x" * 129, "is 129 characters long, the limit is 128"),
        ("a\x1fb", "must be printable text (no control, format or non-U+0020 space characters)"),
        ("a\u200bb", "must be printable text (no control, format or non-U+0020 space characters)"),
        (" ab", "must not start or end with a space"),
        ("ab ", "must not start or end with a space"),
    ],
)
def test_each_id_is_refused_with_its_reason(name: str, value: str, reason: str) -> None:
    from engine.validation import Limits, validate

    txn = replace(Transaction("v-1", T0, 100, "EUR", card_id="c1", user_id="u1"), **{name: value})
    with pytest.raises(InvalidTransaction) as caught:
        validate(txn, Limits(), None)
    assert (caught.value.field, caught.value.reason) == (name, reason)
    assert validate(replace(txn, **{name: "x" * 128}), Limits(), None) is None  # at the limit: fine


KILLED_REPLAY = """
import multiprocessing as mp, os, signal, sys
sys.path.insert(0, {root!r})
from engine.offline.datasets import PRESETS, read_dataset
from engine.offline.replay import replay
from engine.rules import load_ruleset

transactions = read_dataset({data!r}, PRESETS["native"]).transactions[:8_000]
run = replay(transactions, load_ruleset({rules!r}), None, batch_size=128, parallel=True)
next(run)
print(mp.active_children()[0].pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of any kind
"""


def test_a_windows_pass_whose_replay_was_killed_exits(synthetic_data: Path) -> None:
    """Killed scoring side: the windows pass finds its pipe broken and ends, it is not left behind."""
    import subprocess
    import sys
    import time

    root = str(ROOT)
    script = KILLED_REPLAY.format(root=root, data=str(synthetic_data), rules=str(RULES))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)  # still there?
        except ProcessLookupError:
            return
        # A zombie (exited, not reaped because its parent died) counts as gone.
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().split(") ", 1)[1].startswith("Z"):
                return
        time.sleep(0.2)
    raise AssertionError(f"windows pass {pid} still running 30 s after its replay was killed")


def test_a_windows_pass_out_of_step_is_caught_not_trusted(
    synthetic_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the two sides ever disagreed on the store calls, answers would go to the wrong transaction: refused."""
    ruleset = load_ruleset(RULES)
    transactions = read_dataset(synthetic_data, PRESETS["native"]).transactions[:3_000]
    real = Pipeline.add_to_windows
    calls = itertools.count()

    def skipping(self: Pipeline, txn: Transaction) -> None:
        if next(calls) != 1_000:  # the forked pass (only it calls this) leaves one transaction out
            real(self, txn)

    monkeypatch.setattr(Pipeline, "add_to_windows", skipping)
    got = 0
    with pytest.raises(RuntimeError, match="out of step"):
        for _ in replay(transactions, ruleset, None, batch_size=256, parallel=True):
            got += 1
    assert got <= 1_000
