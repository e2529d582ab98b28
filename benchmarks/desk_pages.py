"""The review desk at scale: queue and case pages over one million cases in PostgreSQL.

    python benchmarks/desk_pages.py [--cases 1000000] [--open 30000] [--allows 1000000] [--requests 100]
                                    [--server postgresql://postgres@127.0.0.1:5432/postgres] [--keep]

Creates a database of its own on the server (dropped at the end unless
--keep), brings it to the newest migration, and loads with COPY:
- `--cases` cases over the last 60 days, of which `--open` are waiting
  (decided in the last 48 hours, a fifth of them claimed, 2,000 escalated)
  and the rest resolved (30 % fraud) by 40 analysts; each case has the full
  decision record (reasons, model contributions, 50 features: ~1.5 KB), one
  to three reasons drawn from the shipped rules and the model;
- the same cases' decisions plus `--allows` allowed payments in the history
  table, on 200,000 cards, 150,000 devices and 100,000 IPs (about ten
  decisions per card); the per-hour and per-rule counts.
Then it starts `risk-engine console` on that database (no decision log, no
engine), signs in as a lead, and requests each kind of page `--requests`
times, one at a time over one keep-alive connection (the server-side work
of a page: queries and rendering; the client is on the same 2 cores):
the queue as it opens, sorted by score and by amount, filtered by reason,
rule, amount range, currency, country, assignee and age, page 20, the
resolved history; and the case pages of random cases (payment, reasons,
contributions, history of card, device and IP with their cases, notes,
audit trail). Writes benchmarks/results/desk_pages.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.desk.auth import create_user  # noqa: E402
from engine.desk.db import open_db  # noqa: E402
from engine.rules.loader import load_ruleset  # noqa: E402

DAY = 86_400_000
NULL = "\\N"  # COPY text format
ANALYSTS = [f"analyst{i:02d}" for i in range(40)]
CURRENCIES = [("EUR", 1.0, 0.6), ("USD", 0.92, 0.2), ("GBP", 1.17, 0.1), ("CNY", 0.13, 0.1)]
COUNTRIES = ["GB", "DE", "FR", "US", "CN", "NL", "ES", "IT", "BR", "NG"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def load(url: str, n_cases: int, n_open: int, n_allows: int) -> dict[str, float]:
    rng = np.random.default_rng(7)
    random.seed(7)
    rules = load_ruleset(ROOT / "rules", run_tests=False)
    pairs = [(r.reason_code, r.id) for r in rules.rules if r.mode == "active"] + [
        ("MODEL_SCORE_ELEVATED", ""),
        ("MODEL_SCORE_HIGH", ""),
    ]
    features = {name: 1.0 for name in sorted(rules.catalog) if rules.catalog[name] in ("number", "bool")}
    feature_text = json.dumps(features, separators=(",", ":"))[1:-1]
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    cards, devices, ips, merchants = 200_000, 150_000, 100_000, 5_000

    n_res = n_cases - n_open
    decided = np.concatenate(
        [
            np.sort(rng.integers(now - 60 * DAY, now - 2 * DAY, n_res)),
            np.sort(rng.integers(now - 2 * DAY, now - 60_000, n_open)),
        ]
    )
    card = rng.integers(0, cards, n_cases)
    device = rng.integers(0, devices, n_cases)
    ip = rng.integers(0, ips, n_cases)
    merchant = rng.integers(0, merchants, n_cases)
    amount = (rng.lognormal(9.5, 1.3, n_cases)).astype(np.int64) + 100
    cur = rng.choice(len(CURRENCIES), n_cases, p=[c[2] for c in CURRENCIES])
    country = rng.integers(0, len(COUNTRIES), n_cases)
    ipc = np.where(rng.random(n_cases) < 0.8, country, rng.integers(0, len(COUNTRIES), n_cases))
    score = rng.beta(2, 5, n_cases)
    n_reasons = rng.integers(1, 4, n_cases)
    reason_idx = rng.integers(0, len(pairs), (n_cases, 3))

    with psycopg.connect(url) as conn:
        with (
            conn.cursor() as cur_,
            cur_.copy(
                "COPY cases (id, transaction_id, kind, status, created_at_ms, decided_at_ms, event_time_ms, decision, "
                "score, degraded, amount_minor, currency, amount_base, user_id, card_id, device_id, ip, country, "
                "ip_country, ip_region, merchant_id, merchant_category, channel, ruleset_version, ruleset_digest, "
                "model_version, record, claimed_by, claimed_at_ms, escalated_by, resolution, resolved_by, "
                "resolved_at_ms, "
                "label_state, label_sent_at_ms, label_attempts, label_error, reason_codes, rule_ids) FROM STDIN"
            ) as copy,
        ):
            buf: list[str] = []
            for i in range(n_cases):
                cid = i + 1
                tid = f"tx-{cid:08d}"
                code, rate, _ = CURRENCIES[cur[i]]
                base = round(amount[i] / 100 * rate, 2)
                d = int(decided[i])
                chosen = [pairs[j] for j in reason_idx[i][: n_reasons[i]]]
                reasons = ",".join(
                    f'{{"code":"{c}","source":"{"rule" if r else "model"}","rule_id":"{r}","action":"review",'
                    f'"message":"{"model score 0.4 >= review threshold 0.3 (model)" if not r else "rule message"}"'
                    + (
                        ',"contributions":[{"feature":"amount_to_card_avg_30d","value":6.0,"contribution":1.2},'
                        '{"feature":"card_count_10m","value":3.0,"contribution":0.6},'
                        '{"feature":"device_distinct_cards_1d","value":2.0,"contribution":0.3}]'
                        if not r
                        else ""
                    )
                    + "}"
                    for c, r in chosen
                )
                record = (
                    f'{{"v":1,"decided_at_ms":{d},"transaction":{{"transaction_id":"{tid}","event_time_ms":{d - 3},'
                    f'"amount_minor":{int(amount[i])},"currency":"{code}","user_id":"u-{card[i]}",'
                    f'"card_id":"tok_{card[i]}","device_id":"dev_{device[i]}","ip":"10.{ip[i] // 65536}.'
                    f'{ip[i] // 256 % 256}.{ip[i] % 256}","country":"{COUNTRIES[country[i]]}",'
                    f'"merchant_id":"m-{merchant[i]}","channel":"web","merchant_category":"5812","attributes":{{}}}},'
                    f'"decision":"review","score":{score[i]:.4f},"degraded":false,"reasons":[{reasons}],"shadow":[],'
                    f'"features":{{{feature_text}}},"ruleset_version":"{rules.version}",'
                    f'"model_version":"handbook-gbm-0cf15f867b","elapsed_us":1200,"challenger":null}}'
                )
                resolved = i < n_res
                if resolved:
                    res_at = d + int(rng.integers(300_000, 3 * DAY))
                    who = ANALYSTS[i % len(ANALYSTS)]
                    tail = (
                        f"{who}\t{d + 60_000}\t\\N\t{'fraud' if rng.random() < 0.3 else 'genuine'}\t{who}\t{res_at}"
                        f"\tsent\t{res_at + 200}\t1\t\\N"
                    )
                    status = "resolved"
                else:
                    k = i - n_res
                    escalated = k < 2000
                    claimed = (not escalated) and rng.random() < 0.2
                    who = ANALYSTS[i % len(ANALYSTS)] if claimed else NULL
                    claimed_at = str(d + 60_000) if claimed else NULL
                    escalated_by = ANALYSTS[0] if escalated else NULL
                    tail = f"{who}\t{claimed_at}\t{escalated_by}" + "\t\\N" * 5 + "\t0\t\\N"
                    status = "escalated" if escalated else "open"
                codes = " " + " ".join(dict.fromkeys(c for c, _ in chosen)) + " "
                named = [r for _, r in chosen if r]
                rule_ids = " " + " ".join(dict.fromkeys(named)) + " " if named else ""
                ipv = f"10.{ip[i] // 65536}.{ip[i] // 256 % 256}.{ip[i] % 256}"
                buf.append(
                    f"{cid}\t{tid}\treview\t{status}\t{d + 500}\t{d}\t{d - 3}\treview\t{score[i]:.4f}\tf"
                    f"\t{int(amount[i])}"
                    f"\t{code}\t{base}\tu-{card[i]}\ttok_{card[i]}\tdev_{device[i]}\t{ipv}\t{COUNTRIES[country[i]]}"
                    f"\t{COUNTRIES[ipc[i]]}\t\tm-{merchant[i]}\t5812\tweb\t{rules.version}\t{rules.digest}"
                    f"\thandbook-gbm-0cf15f867b\t{esc(record)}\t{tail}\t{codes}\t{rule_ids}\n"
                )
                if len(buf) >= 5000:
                    copy.write("".join(buf))
                    buf.clear()
            copy.write("".join(buf))
        timings["cases_s"] = time.perf_counter() - t0

        with conn.cursor() as cur_, cur_.copy("COPY case_reasons (case_id, code, rule_id, source) FROM STDIN") as copy:
            buf = []
            for i in range(n_cases):
                for j in reason_idx[i][: n_reasons[i]]:
                    c, r = pairs[j]
                    buf.append(f"{i + 1}\t{c}\t{r}\t{'rule' if r else 'model'}\n")
                if len(buf) >= 20000:
                    copy.write("".join(buf))
                    buf.clear()
            copy.write("".join(buf))
        timings["reasons_s"] = time.perf_counter() - t0 - sum(timings.values())

        with (
            conn.cursor() as cur_,
            cur_.copy(
                "COPY decisions (transaction_id, decided_at_ms, event_time_ms, decision, score, amount_minor, "
                "currency, "
                "card_id, device_id, ip, merchant_id, reasons) FROM STDIN"
            ) as copy,
        ):
            buf = []
            for i in range(n_cases):
                d = int(decided[i])
                buf.append(
                    f"tx-{i + 1:08d}\t{d}\t{d - 3}\treview\t{score[i]:.4f}\t{int(amount[i])}\t{CURRENCIES[cur[i]][0]}"
                    f"\ttok_{card[i]}\tdev_{device[i]}\t10.{ip[i] // 65536}.{ip[i] // 256 % 256}.{ip[i] % 256}"
                    f"\tm-{merchant[i]}\tAMOUNT_VERY_LARGE\n"
                )
                if len(buf) >= 20000:
                    copy.write("".join(buf))
                    buf.clear()
            a_time = rng.integers(now - 60 * DAY, now, n_allows)
            a_card = rng.integers(0, cards, n_allows)
            a_dev = rng.integers(0, devices, n_allows)
            a_ip = rng.integers(0, ips, n_allows)
            for i in range(n_allows):
                d = int(a_time[i])
                buf.append(
                    f"al-{i:08d}\t{d}\t{d - 3}\tallow\t0.0100\t2500\tEUR\ttok_{a_card[i]}\tdev_{a_dev[i]}"
                    f"\t10.{a_ip[i] // 65536}.{a_ip[i] // 256 % 256}.{a_ip[i] % 256}\tm-{i % merchants}\t\n"
                )
                if len(buf) >= 20000:
                    copy.write("".join(buf))
                    buf.clear()
            copy.write("".join(buf))
        timings["decisions_s"] = time.perf_counter() - t0 - sum(timings.values())
        conn.execute(f"SELECT setval(pg_get_serial_sequence('cases', 'id'), {n_cases})")
        conn.execute(
            "INSERT INTO decision_hours (hour_ms, decision, n) SELECT decided_at_ms - decided_at_ms % 3600000, "
            "decision, count(*) FROM decisions GROUP BY 1, 2"
        )
        conn.execute(
            "INSERT INTO rule_hits (day_ms, rule_id, n) SELECT c.decided_at_ms - c.decided_at_ms % 86400000, "
            "r.rule_id, count(*) FROM case_reasons r JOIN cases c ON c.id = r.case_id WHERE r.rule_id <> '' "
            "GROUP BY 1, 2"
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        timings["counts_and_analyze_s"] = time.perf_counter() - t0 - sum(timings.values())
    return {k: round(v, 1) for k, v in timings.items()}


def start_console(db: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "engine.cli", "console", "--db", db, "--port", str(port)),
            *("--decision-log", "off", "--engine", "off"),
        ],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the console did not start")


def measure(url: str, requests: int, n_cases: int, n_open: int) -> dict[str, dict[str, float]]:
    client = httpx.Client(base_url=url, timeout=60)
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    answer = client.post("/login", data={"name": "lead", "password": "bench-password", "csrf": token, "next": "/"})
    assert answer.status_code in (200, 303), answer.text
    queue_pages = {
        "queue: as it opens (oldest first)": "/queue",
        "queue: by score": "/queue?sort=score",
        "queue: by amount": "/queue?sort=amount",
        "queue: reason MODEL_SCORE_HIGH": "/queue?reason=MODEL_SCORE_HIGH",
        "queue: rule very_large_amount": "/queue?rule=very_large_amount",
        "queue: amount 500-2,000": "/queue?min_amount=500&max_amount=2000",
        "queue: currency USD, by score": "/queue?currency=USD&sort=score",
        "queue: country NG": "/queue?country=NG",
        "queue: unclaimed": "/queue?assignee=none",
        "queue: assignee analyst07": "/queue?assignee=analyst07",
        "queue: older than 24 h": "/queue?min_age=1440",
        "queue: page 20": "/queue?page=20",
        "queue: resolved, newest first": "/queue?status=resolved&order=desc",
    }
    rng = random.Random(11)
    out: dict[str, dict[str, float]] = {}
    every_queue: list[float] = []
    for name, path in queue_pages.items():
        for _ in range(5):
            client.get(path)
        times = []
        for _ in range(requests):
            t = time.perf_counter()
            r = client.get(path)
            times.append(time.perf_counter() - t)
            assert r.status_code == 200, (path, r.status_code)
        every_queue += times
        out[name] = stats(times)
    case_times = []
    open_times = []
    for k in range(requests * 5 + 10):
        cid = rng.randint(1, n_cases) if k % 2 else rng.randint(n_cases - n_open + 1, n_cases)
        t = time.perf_counter()
        r = client.get(f"/cases/{cid}")
        dt = time.perf_counter() - t
        assert r.status_code == 200 and "Recent history" in r.text
        if k >= 10:
            (case_times if k % 2 else open_times).append(dt)
    out["case page: random case"] = stats(case_times)
    out["case page: random open case"] = stats(open_times)
    out["all queue pages"] = stats(every_queue)
    out["all case pages"] = stats(case_times + open_times)
    return out


def stats(times: list[float]) -> dict[str, float]:
    ms = np.array(times) * 1000
    return {
        "n": len(times),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--open", type=int, default=30_000)
    parser.add_argument("--allows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=100, help="requests per kind of page")
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the database (its URL is printed)")
    args = parser.parse_args()

    name = f"desk_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{args.server.rpartition('/')[0]}/{name}"
    workdir = Path(f"/tmp/{name}")
    workdir.mkdir(exist_ok=True)
    proc = None
    try:
        engine = open_db(url)
        create_user(engine, "lead", "lead", "bench-password")
        for who in ANALYSTS:
            create_user(engine, who, "analyst", None)
        engine.dispose()
        print(f"loading {args.cases:,} cases into {url} ...", flush=True)
        load_times = load(url, args.cases, args.open, args.allows)
        print(f"loaded: {load_times}", flush=True)
        with psycopg.connect(url) as conn:
            sizes = {
                t: conn.execute(f"SELECT pg_total_relation_size('{t}')").fetchone()[0]  # type: ignore[index]
                for t in ("cases", "case_reasons", "decisions")
            }
            counts = {
                t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                for t in ("cases", "case_reasons", "decisions")
            }
        proc, console = start_console(url, workdir)
        pages = measure(console, args.requests, args.cases, args.open)
        result = {
            "benchmark": "desk_pages: queue and case pages of risk-engine console on PostgreSQL",
            "cases": counts["cases"],
            "open_cases": args.open,
            "rows": counts,
            "table_mb": {t: round(s / 2**20) for t, s in sizes.items()},
            "load_s": load_times,
            "requests_per_page_kind": args.requests,
            "pages": pages,
            "machine": {
                "cpus": os.cpu_count(),
                "cpu": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "postgresql": psycopg.connect(url).execute("SHOW server_version").fetchone()[0],  # type: ignore[index]
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            },
            "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        out = ROOT / "benchmarks" / "results" / "desk_pages.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(15)
        if args.keep:
            print(f"kept {url}")
        else:
            with psycopg.connect(args.server, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
