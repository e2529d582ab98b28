"""Data protection end to end: card data refused, ids pseudonymous in Redis (single and cluster) and the decision log.

A real server on a real socket with a real Redis (or a local Redis Cluster) and a decision log; every
key, member and value Redis holds afterwards is read back and searched for the ids that were sent.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from engine.decision_log import files, read_records
from engine.service.pb import risk_pb2_grpc
from engine.service.server import Running, start
from tests.support.redis import redis_contents, redis_or_cluster
from tests.support.requests import request
from tests.support.served import make_config

PAN = "4111 1111 1111 1111"
#: Ids as real systems send them; none may appear in clear in Redis or the decision log.
CARD = "卡 tok-7f3a"
USER = "alice@example.com"
DEVICE = "dev 9c2e"
MERCHANT = "北京 朝阳 商户"
IP = "85.214.132.117"


def redis_content(clients: list[redis.Redis]) -> bytes:
    """Every key name, member, field and value under every client, as one blob to search."""
    return b"\n".join(part for key, parts in redis_contents(clients).items() for part in (key, *parts))


@pytest.fixture(params=["redis", "cluster"])
def protected(
    request: pytest.FixtureRequest, trained_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Running, list[redis.Redis], Path]]:
    """A server with a decision log and the default data protection, on Redis or a Redis Cluster."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    prefix = f"dp-{uuid.uuid4().hex[:10]}"
    url, clients = redis_or_cluster(request)
    log = tmp_path / "decisions"
    running = start(make_config(trained_registry, (url, prefix), decision_log=log))
    yield running, clients, log
    running.stop(0.5)
    for c in clients:
        keys = list(c.scan_iter(match=f"*{prefix}*", count=1000))
        for k in keys:
            c.delete(k)
        c.close()


def test_ids_are_pseudonymous_in_redis_and_the_decision_log(protected: tuple[Running, list[redis.Redis], Path]) -> None:
    running, clients, log = protected
    stub = risk_pb2_grpc.RiskEngineStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
    ids = dict(card_id=CARD, user_id=USER, device_id=DEVICE, merchant_id=MERCHANT, ip=IP)
    first = stub.Score(request(**ids, attributes={"device_os": "ios", "note": "call me"}), timeout=5)
    second = stub.Score(request(**ids), timeout=5)
    assert not first.degraded and not second.degraded
    # Unicode ids with spaces work end to end: the second call sees the first in every window.
    assert second.features["card_count_10m"] == 2
    assert second.features["merchant_count_1d"] == 2
    assert second.features["device_distinct_cards_1d"] == 1
    assert running.store.flush(5.0)

    blob = redis_content(clients)
    assert running.store.name in ("redis", "redis-cluster") and blob  # something was written
    for value in (CARD, USER, DEVICE, MERCHANT, IP):
        assert value.encode() not in blob, value
    names = b"\n".join(k for c in clients for k in c.scan_iter(count=1000))
    assert first.transaction_id.encode() not in names  # the retry record's key names it by pseudonym too
    assert b"{" + running.store.prefix.encode() + b":card_id:p:" in blob  # the card's keys, by pseudonym

    assert running.decisions is not None
    running.decisions.sync()
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o700
    written = files(log)
    assert written and all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in written)
    text = "".join(f.read_text() for f in written)
    for value in (CARD, USER, DEVICE, IP, "call me", "ios"):
        assert value not in text, value
    records = list(read_records(log))
    assert len(records) == 2
    txn = records[0]["transaction"]
    assert records[0]["ids"] == "pseudonyms"
    assert txn["card_id"].startswith("p:") and txn["card_id"] == records[1]["transaction"]["card_id"]
    assert txn["ip"] == "85.214.132.0"  # the network, enough to locate it
    assert txn["attributes"] == {}  # the shipped rule set keeps none
    assert txn["merchant_id"] == MERCHANT  # merchants are businesses: kept readable
    key_file = log / "pseudonym.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("transaction.card_id", dict(card_id=PAN)),
        ("transaction.card_id", dict(card_id="4111-1111-1111-1111")),
        ("transaction.user_id", dict(user_id="5555555555554444")),
        ("transaction.device_id", dict(device_id="378282246310005")),
        ("transaction.attributes[note]", dict(attributes={"note": "6011 1111 1111 1117"})),
        ("transaction.attributes[note]", dict(attributes={"note": "card 4111 1111 1111 1111 exp 12/27"})),
        ("transaction.attributes[cvv]", dict(attributes={"cvv": "739"})),
        ("transaction.attributes[card_pin]", dict(attributes={"card_pin": "1234"})),
        ("transaction.attributes[track2]", dict(attributes={"track2": ";4111111111111111=2512"})),
    ],
)
def test_card_data_is_refused_and_kept_nowhere(
    protected: tuple[Running, list[redis.Redis], Path], field: str, kwargs: dict, caplog: pytest.LogCaptureFixture
) -> None:
    running, clients, log = protected
    stub = risk_pb2_grpc.RiskEngineStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
    before = redis_content(clients)
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(request(**kwargs), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":")
    assert "send a token" in err.value.details() or "never send it" in err.value.details()
    sent = next(iter(kwargs.values()))
    secret = next(iter(sent.values())) if isinstance(sent, dict) else sent
    assert secret not in err.value.details()
    assert redis_content(clients) == before  # nothing reached Redis
    assert not list(read_records(log))  # nor the decision log
    assert secret not in caplog.text  # nor the server's log


def test_the_mask_switch_scores_with_the_card_number_replaced(
    trained_registry: Path, redis_url: tuple[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "decisions"
    running = start(
        make_config(
            trained_registry,
            redis_url,
            decision_log=log,
            card_data="mask",
            pseudonym_key_file=_key_file(tmp_path),
        )
    )
    try:
        stub = risk_pb2_grpc.RiskEngineStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
        stub.Score(request(card_id=PAN, attributes={"cvv": "739"}), timeout=5)
        again = stub.Score(request(card_id="4111-1111-1111-1111"), timeout=5)
        assert again.features["card_count_10m"] == 2  # however it is spaced, one card (by its pseudonym)
        assert running.store.flush(5.0)
        blob = redis_content([redis.Redis.from_url(redis_url[0])])
        text = "".join(f.read_text() for f in files(log))
        for spelling in ("4111111111111111", PAN, "4111-1111-1111-1111", "cvv"):
            assert spelling.encode() not in blob and spelling not in text, spelling
        records = [json.loads(line) for line in text.splitlines()]
        assert len(records) == 2 and all(r["transaction"]["attributes"] == {} for r in records)
        assert records[0]["transaction"]["card_id"] == records[1]["transaction"]["card_id"]
        assert records[0]["transaction"]["card_id"].startswith("p:")
    finally:
        running.stop(0.5)


def _key_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.key"
    path.write_text("ab" * 32 + "\n")
    path.chmod(0o600)
    return path


def test_a_card_blocked_by_its_pseudonym_is_denied_when_sent_in_clear(
    trained_registry: Path, redis_url: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review desk blocks what it reads in a pseudonymous decision log: the pseudonym; the rules still match."""
    import shutil

    from tests.support import RULES

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    log = tmp_path / "decisions"
    running = start(make_config(trained_registry, redis_url, rules=rules, decision_log=log, reload_interval_s=0))
    try:
        stub = risk_pb2_grpc.RiskEngineStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
        first = stub.Score(request(card_id="卡 stolen 9"), timeout=5)
        assert "BLOCKLISTED" not in [r.code for r in first.reasons]
        pseudonym = next(iter(read_records(log)))["transaction"]["card_id"]
        assert pseudonym.startswith("p:")
        blocked = rules / "lists" / "blocked_cards.txt"
        blocked.write_text(blocked.read_text() + f"{pseudonym}  # lead: seen in confirmed fraud\n")
        assert running.reloader.reload_now()
        again = stub.Score(request(card_id="卡 stolen 9"), timeout=5)
        assert "BLOCKLISTED" in [r.code for r in again.reasons]
        other = stub.Score(request(card_id="卡 stolen 10"), timeout=5)
        assert "BLOCKLISTED" not in [r.code for r in other.reasons]
        listed = stub.Score(request(card_id="card-stolen-0001"), timeout=5)  # clear entries still match
        assert "BLOCKLISTED" in [r.code for r in listed.reasons]
    finally:
        running.stop(0.5)
