"""Admin has an identity of its own: a bearer token, or a client certificate on the admin allow-list (issue 17)."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from engine.config import ServeConfig
from engine.service.pb import admin_pb2, admin_pb2_grpc
from engine.service.server import Running, start
from tests.support import RULES
from tests.support.certs import make_certs
from tests.support.served import make_config

pytestmark = [pytest.mark.server]


@pytest.fixture
def admin(trained_registry: Path, tmp_path: Path) -> Iterator[tuple[Running, ServeConfig]]:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    config = make_config(
        trained_registry, rules=rules, admin_port=0, decision_log=tmp_path / "decisions", reload_interval_s=0
    )
    running = start(config)
    yield running, config
    running.stop(0.5)


def code_of(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def test_admin_needs_its_token(admin: tuple[Running, ServeConfig], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="risk_engine.admin")
    running, config = admin
    token_file = config.admin_token_path
    assert token_file == config.decision_log / "admin.token"  # type: ignore[operator]
    assert token_file.stat().st_mode & 0o777 == 0o600
    stub = admin_pb2_grpc.AdminStub(grpc.insecure_channel(f"127.0.0.1:{running.admin_port}"))
    good = (("authorization", f"Bearer {token_file.read_text().strip()}"),)
    wrong = (("authorization", "Bearer " + "0" * 64),)
    for method, req in ((stub.Status, admin_pb2.StatusRequest()), (stub.Reload, admin_pb2.ReloadRequest())):
        assert code_of(lambda: method(req, timeout=5)) == grpc.StatusCode.UNAUTHENTICATED  # noqa: B023
        assert code_of(lambda: method(req, timeout=5, metadata=wrong)) == grpc.StatusCode.PERMISSION_DENIED  # noqa: B023
        assert code_of(lambda: method(req, timeout=5, metadata=(("authorization", "Basic x"),))) == (  # noqa: B023
            grpc.StatusCode.PERMISSION_DENIED
        )
    assert running.reloader.status.reloads_ok == 0 and running.reloader.status.reloads_failed == 0  # none ran
    assert stub.Status(admin_pb2.StatusRequest(), timeout=5, metadata=good).last_reload_ok
    audit = [r for r in caplog.records if getattr(r, "event", "") == "admin_audit"]
    assert [(r.action, r.result) for r in audit] == [  # type: ignore[attr-defined]
        ("status", "UNAUTHENTICATED"),
        ("status", "PERMISSION_DENIED"),
        ("status", "PERMISSION_DENIED"),
        ("reload", "UNAUTHENTICATED"),
        ("reload", "PERMISSION_DENIED"),
        ("reload", "PERMISSION_DENIED"),
        ("status", "ok"),
    ]
    assert audit[-1].who == "token" and audit[0].who == "no credential"  # type: ignore[attr-defined]
    assert "0" * 64 not in caplog.text and token_file.read_text().strip() not in caplog.text


def test_reload_says_whether_anything_changed_and_is_rate_limited(admin: tuple[Running, ServeConfig]) -> None:
    running, config = admin
    stub = admin_pb2_grpc.AdminStub(grpc.insecure_channel(f"127.0.0.1:{running.admin_port}"))
    good = (("authorization", f"Bearer {config.admin_token_path.read_text().strip()}"),)
    digest = running.reloader.status.ruleset_digest
    same = stub.Reload(admin_pb2.ReloadRequest(), timeout=30, metadata=good)
    assert not same.reloaded and same.status.reloads_ok == 0 and same.status.ruleset_digest == digest
    with pytest.raises(grpc.RpcError) as limited:
        stub.Reload(admin_pb2.ReloadRequest(), timeout=30, metadata=good)  # at once: a loop of reloads
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    blocked = config.rules / "lists" / "blocked_cards.txt"
    blocked.write_text(blocked.read_text() + "tok-stolen-1\n")
    time.sleep(2.1)  # the rate limit: one reload per 2 s
    changed = stub.Reload(admin_pb2.ReloadRequest(), timeout=30, metadata=good)
    assert changed.reloaded and changed.status.reloads_ok == 1 and changed.status.ruleset_digest != digest


def test_over_mutual_tls_only_the_admin_allow_list_may_call_admin(trained_registry: Path, tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    certs = make_certs(tmp_path / "certs")
    config = make_config(
        trained_registry,
        admin_port=0,
        decision_log=tmp_path / "decisions",
        tls_cert=certs / "server.pem",
        tls_key=certs / "server.key",
        tls_client_ca=certs / "ca.pem",
        admin_allow=("admin",),
        reload_interval_s=0,
    )
    running = start(config)

    def status(client: str) -> grpc.StatusCode:
        creds = grpc.ssl_channel_credentials(
            root_certificates=(certs / "ca.pem").read_bytes(),
            private_key=(certs / f"{client}.key").read_bytes(),
            certificate_chain=(certs / f"{client}.pem").read_bytes(),
        )
        with grpc.secure_channel(f"localhost:{running.admin_port}", creds) as channel:
            return code_of(lambda: admin_pb2_grpc.AdminStub(channel).Status(admin_pb2.StatusRequest(), timeout=5))

    try:
        assert status("admin") == grpc.StatusCode.OK
        assert status("client") == grpc.StatusCode.PERMISSION_DENIED  # the gateway's certificate
    finally:
        running.stop(0.5)
