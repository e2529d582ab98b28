"""A Redis written by the previous layout (values in a hash beside each value series) keeps its windows.

The previous script (`tests/support/windows_previous.lua`, the script before issue 23, verbatim)
writes a stream's first part; the current store then goes on with the same Redis. Every answer
of the current store equals the in-process store's, fed the whole stream: nothing is reset to zero
at the upgrade. The old hashes are migrated into the members by the first call that touches
their series, and a dry run reads them through without writing. During a rolling upgrade (old and
new workers on one Redis, taking turns) the new workers' answers stay exact too.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from engine.windows.memory import MemoryStore
from engine.windows.redis_store import RedisStore
from engine.windows.spec import EXACT, Aggregate, Group, WindowPlan, WindowSpec
from tests.support.redis import redis_contents
from tests.support.windows import DAY, HOUR, MIN, PLAN, T0, compiled_plan, event_fields

pytestmark = pytest.mark.redis

PREVIOUS = (Path(__file__).resolve().parent.parent / "support" / "windows_previous.lua").read_text()

#: Long windows too: sums over hourly buckets (running totals), a max over them (the hours read whole).
LONG = compiled_plan(
    [
        WindowSpec("card_count_2d", ("card_id",), Aggregate.COUNT, 2 * DAY),
        WindowSpec("card_sum_3d", ("card_id",), Aggregate.SUM, 3 * DAY, "amount"),
        WindowSpec("card_max_2d", ("card_id",), Aggregate.MAX, 2 * DAY, "amount"),
        WindowSpec("card_sum_1h_big", ("card_id",), Aggregate.SUM, HOUR, "amount", "amount_base_minor >= 500"),
        WindowSpec("device_cards_2d", ("device_id",), Aggregate.DISTINCT, 2 * DAY, "card_id"),
        WindowSpec("device_cards_1d_after_1h", ("device_id",), Aggregate.DISTINCT, DAY, "card_id", None, HOUR),
        WindowSpec("card_countries_1d", ("card_id",), Aggregate.DISTINCT, DAY, "ip_country"),
        WindowSpec("card_since_previous_2d", ("card_id",), Aggregate.SINCE_PREVIOUS, 2 * DAY),
    ],
    allowed_lateness_ms=2 * HOUR,
    amount_scale=0.01,
    max_events_per_series=6,
)


def _previous_totals(group: Group) -> bool:
    """The previous version's rule: running totals unless a long window of the group is a min or a max."""
    return bool(group.bucket_retention_ms) and not any(w.mode != EXACT and w.agg_code in (3, 4) for w in group.windows)


class PreviousStore(RedisStore):
    """The store of the version before issue 23 (a worker not upgraded yet): its script, its keys."""

    _lua = PREVIOUS
    _totals = staticmethod(_previous_totals)


def _stream(n: int, seed: int, span_ms: int) -> list[tuple[str, int, dict[str, object]]]:
    """Events in (mostly) time order, some late within the lateness, some retried (same id again)."""
    rng = random.Random(seed)
    out: list[tuple[str, int, dict[str, object]]] = []
    t = T0
    for i in range(n):
        t += rng.randrange(span_ms // n * 2)
        when = t - rng.randrange(HOUR) if rng.random() < 0.15 else t
        fields = event_fields(rng.choice(["c1", "c2", "c3"]), rng.choice(["d1", "d2", ""]), rng.randrange(1, 1000))
        out.append((f"t{i}", when, fields))
        if rng.random() < 0.05:
            out.append(out[rng.randrange(len(out))])  # a retry: the same id, time and content
    return out


@pytest.mark.parametrize(("plan", "span_ms"), [(PLAN, 6 * HOUR), (LONG, 5 * DAY)], ids=["short", "long"])
def test_the_current_layout_goes_on_from_the_previous_one(
    redis_url: tuple[str, str], plan: WindowPlan, span_ms: int
) -> None:
    url, prefix = redis_url
    old = PreviousStore(url, prefix=prefix, budget_s=2.0, write_behind=False)
    new = RedisStore(url, prefix=prefix, budget_s=2.0, write_behind=False)
    memory = MemoryStore()
    client = new._client
    stream = _stream(300, 7, span_ms)
    try:
        for i, (txid, t, fields) in enumerate(stream):
            bound = plan.bind(txid, t, fields)
            if i == 150:
                hashes = list(client.scan_iter(match=f"{{{prefix}:*}}:h:*"))
                assert hashes, "the previous layout keeps values in hashes"
                # A dry run reads them through and writes nothing (the hashes stay).
                before = redis_contents([client], f"*{prefix}*")
                assert plan.finish(new.read(plan, bound).raw) == plan.finish(memory.read(plan, bound).raw)
                assert redis_contents([client], f"*{prefix}*") == before
            want = plan.finish(memory.apply(plan, bound, f"fp-{txid}").raw)
            if i < 150:  # written by the previous version alone
                old.apply(plan, bound, f"fp-{txid}")
                continue
            # Then workers of both versions take turns: the new ones' answers are exact.
            store = old if i >= 220 and i % 3 == 0 else new
            got = plan.finish(store.apply(plan, bound, f"fp-{txid}").raw)
            if store is new:
                assert got == want, f"event {i} ({txid} at {t - T0} ms): memory {want} != redis {got}"
        # The upgraded version migrated each hash it met (an old worker may have written one since).
        for txid, t, fields in stream[-20:]:
            bound = plan.bind(f"{txid}-last", t + MIN, fields)
            want = plan.finish(memory.apply(plan, bound, f"fp-{txid}-last").raw)
            assert plan.finish(new.apply(plan, bound, f"fp-{txid}-last").raw) == want
        touched = {
            tag
            for (_, _, fields) in stream[-20:]
            for tag in (f"card_id:{fields['card_id']}", f"device_id:{fields['device_id']}")
        }
        left = [k.decode() for k in client.scan_iter(match=f"{{{prefix}:*}}:h:*")]
        assert not [k for k in left if k.split("}")[0].split(":", 1)[1] in touched], left
    finally:
        old.close()
        new.close()
