"""`risk-engine serve`: the gRPC server's flags, read into a ServeConfig, and its start."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from engine.cli.rules import archive_flag
from engine.config import ConfigError, ServeConfig

if TYPE_CHECKING:
    pass


def _serve(args: argparse.Namespace) -> int:
    from engine.logs import configure
    from engine.model.predictor import ModelInvalid
    from engine.rules.errors import RuleSetInvalid
    from engine.service.server import serve
    from engine.service.workers import supervise

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    try:
        config = ServeConfig.from_env()
        overrides = {
            "host": args.host,
            "port": args.port,
            "rules": path(args.rules),
            "model": path(args.model),
            "redis_url": args.redis_url,
            "redis_budget_ms": args.redis_budget_ms,
            "threads": args.threads,
            "workers": args.workers,
            "reload_interval_s": args.reload_interval,
            "log_format": args.log_format,
            "tls_cert": path(args.tls_cert),
            "tls_key": path(args.tls_key),
            "tls_client_ca": path(args.tls_client_ca),
            "admin_host": args.admin_host,
            "ruleset_archive": None if args.ruleset_archive is None else archive_flag(args.ruleset_archive),
            "card_data": args.card_data,
            "pseudonym_key_file": path(args.pseudonym_key_file),
            "clear_ids": True if args.clear_ids else None,
            "admin_token_file": path(args.admin_token_file),
            "admin_allow": tuple(args.admin_allow) if args.admin_allow else None,
            "insecure": True if args.insecure else None,
        }
        config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
        ports: dict[str, int | None] = {}
        for flag, name in (("--metrics-port", "metrics_port"), ("--admin-port", "admin_port")):
            value = getattr(args, name)
            if value is not None:
                if value != "off" and not value.isdigit():
                    raise ConfigError(f"{flag} must be a port number or 'off', got {value!r}")
                ports[name] = None if value == "off" else int(value)
        if "metrics_port" in ports:
            config = replace(config, metrics_port=ports["metrics_port"])
        if "admin_port" in ports:
            config = replace(config, admin_port=ports["admin_port"])
        if args.decision_log is not None:
            config = replace(config, decision_log=None if args.decision_log == "off" else Path(args.decision_log))
        configure(config.log_format if config.log_format in ("json", "text") else "text")
        if config.workers > 1 and config.worker_index is None:
            supervise(config)  # N server processes on one port
        else:
            serve(config)
    except ConfigError as exc:
        print(f"risk-engine serve: {exc}", file=sys.stderr)
        return 2
    except RuleSetInvalid as exc:
        print(f"risk-engine serve: the rule set is invalid:\n{exc}", file=sys.stderr)
        return 2
    except ModelInvalid as exc:
        print(f"risk-engine serve: the model cannot be served: {exc}", file=sys.stderr)
        return 2
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `serve` command and its flags (environment variables as defaults)."""
    p = sub.add_parser("serve", help="run the gRPC server (defaults from RISK_* and REDIS_URL)")
    p.add_argument("--host", help="address to listen on (RISK_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (RISK_PORT, default 50051; 0 picks a free one)")
    p.add_argument("--rules", help="rules folder (RISK_RULES, default rules/)")
    p.add_argument("--model", help="model folder or registry (RISK_MODEL, default models/)")
    p.add_argument("--redis-url", help="Redis URL (REDIS_URL); empty: the embedded in-process store")
    p.add_argument("--redis-budget-ms", type=float, help="time budget of one Redis call (RISK_REDIS_BUDGET_MS, 50)")
    p.add_argument("--threads", type=int, help="worker threads (RISK_THREADS, 16)")
    p.add_argument(
        "--workers", type=int, help="server processes sharing the port, more than 1 needs Redis (RISK_WORKERS, 1)"
    )
    p.add_argument("--metrics-port", help="Prometheus /metrics port, or 'off' (RISK_METRICS_PORT, 9464)")
    p.add_argument(
        "--reload-interval",
        type=float,
        help="seconds between checks of the rules folder, 0: off (RISK_RELOAD_INTERVAL_S, 1)",
    )
    p.add_argument("--log-format", choices=("json", "text"), help="log lines (RISK_LOG_FORMAT, json)")
    p.add_argument("--decision-log", help="folder of the decision log, or 'off' (RISK_DECISION_LOG, off)")
    p.add_argument(
        "--ruleset-archive",
        help="folder keeping every rule set loaded, by digest, or 'off'"
        " (RISK_RULESET_ARCHIVE; default: rulesets/ in the decision log's folder)",
    )
    p.add_argument("--tls-cert", help="server certificate chain, PEM: turns TLS on (RISK_TLS_CERT)")
    p.add_argument("--tls-key", help="server private key, PEM (RISK_TLS_KEY)")
    p.add_argument("--tls-client-ca", help="CA bundle for client certificates: mutual TLS (RISK_TLS_CLIENT_CA)")
    p.add_argument("--admin-host", help="admin service address (RISK_ADMIN_HOST, 127.0.0.1)")
    p.add_argument("--admin-port", help="admin service port, or 'off' (RISK_ADMIN_PORT, 50052)")
    p.add_argument(
        "--admin-token-file",
        help="file holding the bearer token admin calls must send (RISK_ADMIN_TOKEN_FILE; default: generated"
        " beside the data)",
    )
    p.add_argument(
        "--admin-allow",
        action="append",
        help="a client certificate identity (common name or SAN) allowed to call admin; repeatable"
        " (RISK_ADMIN_ALLOW, comma-separated)",
    )
    p.add_argument(
        "--card-data",
        choices=("refuse", "mask"),
        help="a card number or CVV/PIN/track data in a request: refuse it, or mask it (RISK_CARD_DATA, refuse)",
    )
    p.add_argument(
        "--pseudonym-key-file",
        help="secret of the keyed hash of ids (RISK_PSEUDONYM_KEY_FILE, or RISK_PSEUDONYM_KEY; default: generated"
        " beside the data)",
    )
    p.add_argument(
        "--clear-ids", action="store_true", help="keep ids in clear in Redis and the decision log (RISK_CLEAR_IDS)"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a plaintext scoring port beyond loopback (RISK_INSECURE; otherwise it needs TLS)",
    )
    p.set_defaults(func=_serve)
