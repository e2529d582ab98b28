"""A real local Redis Cluster for tests: 3 masters + 3 replicas, redis-server processes on free ports."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def _free_port() -> int:
    # Cluster bus ports are port + 10000: pick ports whose bus port is free too.
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


REPLICAS = ("--cluster-replicas", "1", "--cluster-yes")


class LocalCluster:
    """Six redis-server processes in cluster mode; `kill(port)` and `start(port)` one of them."""

    def __init__(self, workdir: Path, node_timeout_ms: int = 1000, full_coverage: bool = True) -> None:
        self.workdir = workdir
        self.node_timeout_ms = node_timeout_ms
        # Redis's default (yes): while a master is flagged failed and not yet replaced, every
        # node refuses every command (CLUSTERDOWN); no: the other masters go on serving.
        self.full_coverage = full_coverage
        # Six distinct ports, none another's cluster bus port (port + 10000): the OS may hand
        # out a just-closed port again, and two nodes on one port would leave one unkillable.
        self.ports: list[int] = []
        while len(self.ports) < 6:
            port = _free_port()
            taken = {q + k for q in self.ports for k in (-10000, 0, 10000)}
            if port not in taken:
                self.ports.append(port)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    @property
    def nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", p) for p in self.ports]

    def start(self, port: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
        d = self.workdir / str(port)
        d.mkdir(parents=True, exist_ok=True)
        if port in self.procs and self.procs[port].poll() is None:
            raise RuntimeError(f"a node already runs on port {port}")
        self.procs[port] = subprocess.Popen(
            [
                binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(d / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-replica-validity-factor", "0",
                "--cluster-require-full-coverage", "yes" if self.full_coverage else "no",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(d),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=port, socket_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.02)
        client.close()
        if self.procs[port].poll() is not None:  # something else answered on that port
            raise RuntimeError(f"redis-server on port {port} exited at start (port taken?)")

    def create(self) -> None:
        for port in self.ports:
            self.start(port)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), *REPLICAS],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        self.wait_ok()

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every live node says cluster_state:ok and every slot has a live master."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._ok():
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ok")
            time.sleep(0.05)

    def _ok(self) -> bool:
        for port in self.procs:
            try:
                c = redis.Redis(port=port, socket_timeout=0.5)
                info = c.execute_command("CLUSTER", "INFO")
                c.close()
            except redis.RedisError:
                return False
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text or "cluster_slots_ok:16384" not in text:
                return False
        return True

    def masters(self) -> list[int]:
        c = redis.Redis(port=next(iter(self.procs)), socket_timeout=0.5)
        out = []
        for line in c.execute_command("CLUSTER", "NODES").decode().splitlines():
            parts = line.split()
            if "master" in parts[2] and "fail" not in parts[2] and parts[8:]:
                out.append(int(parts[1].split("@")[0].rsplit(":", 1)[1]))
        c.close()
        return out

    def slot_masters(self) -> list[tuple[int, int, int]]:
        """(first slot, last slot, master port) of every slot range, as the cluster says now."""
        c = redis.Redis(port=next(iter(self.procs)), socket_timeout=0.5)
        try:
            return [
                (int(start), int(end), int(master[1]))
                for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS")
            ]
        finally:
            c.close()

    def master_of(self, key: str) -> int:
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        c = redis.Redis(port=next(iter(self.procs)), socket_timeout=0.5)
        try:
            for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        finally:
            c.close()
        raise KeyError(key)

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(10)

    def stop(self) -> None:
        for port in list(self.procs):
            self.kill(port)


def start_cluster(workdir: Path, full_coverage: bool = True) -> LocalCluster:
    cluster = LocalCluster(workdir, full_coverage=full_coverage)
    try:
        cluster.create()
    except BaseException:
        cluster.stop()
        raise
    return cluster
