"""A redis-server child process on a free port, for tests and benchmarks (stop and start it again to fail it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A redis-server child process that tests can stop and start again on the same port."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not on PATH and REDIS_URL is not set: "
                "install redis-server (apt-get install redis-server) or set REDIS_URL"
            )
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--enable-debug-command",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def redis_contents(clients: list[redis.Redis], match: str = "*") -> dict[bytes, list[bytes]]:
    """Every key matching `match` under every client, with its whole content: a string's value, a sorted
    set's members and scores, a hash's fields and values, a list's items, a set's members (sorted).

    Equal dicts mean nothing was written; joined, they are a blob to search for a value (TTLs are left out:
    they run down by themselves).
    """
    out: dict[bytes, list[bytes]] = {}
    for client in clients:
        for key in client.scan_iter(match=match, count=1000):
            kind = client.type(key)
            if kind == b"string":
                out[key] = [client.get(key) or b""]
            elif kind == b"zset":
                out[key] = [
                    part for m, s in client.zrange(key, 0, -1, withscores=True) for part in (m, repr(s).encode())
                ]
            elif kind == b"hash":
                out[key] = [part for f, v in sorted(client.hgetall(key).items()) for part in (f, v)]
            elif kind == b"list":
                out[key] = list(client.lrange(key, 0, -1))
            elif kind == b"set":
                out[key] = sorted(client.smembers(key))
            else:
                out[key] = [kind, client.dump(key) or b""]
    return out


def redis_or_cluster(request: pytest.FixtureRequest) -> tuple[str, list[redis.Redis]]:
    """The URL and one client per master of the store a test parametrized with "redis" or "cluster" runs on."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_process").url
        return url, [redis.Redis.from_url(url)]
    cluster = request.getfixturevalue("redis_cluster")
    return cluster.url, [redis.Redis(port=p) for p in cluster.masters()]
