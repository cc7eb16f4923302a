"""Real Redis topologies for the tests: a Redis Cluster (three primaries, one replica each) and a
Sentinel-managed primary with its replica, each made of ``redis-server`` processes on free ports
of 127.0.0.1 and ended by their PIDs.

Timings are small so failover tests are fast: ``cluster-node-timeout`` 1000 ms (a primary that
stops answering is marked failed after about a second and its replica promoted), Sentinel's
``down-after-milliseconds`` 500 and ``failover-timeout`` 2000.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
NODE_TIMEOUT_MS = 1000
#: where the tests look for ports (a cluster node also needs port + 10000, its bus)
PORT_RANGE = range(17000, 18000)


def available() -> bool:
    return os.path.exists(REDIS_SERVER) and os.path.exists(REDIS_CLI)


def _env() -> dict[str, str]:
    # the servers keep the host's clock when the suite runs under tests/faketime/run.sh
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FAKETIME")}


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_next = [PORT_RANGE.start + (os.getpid() * 7) % (len(PORT_RANGE) - 100)]


def free_ports(count: int, bus: bool = False) -> list[int]:
    """``count`` free ports of :data:`PORT_RANGE` (with ``bus``, port + 10000 free as well)."""
    out: list[int] = []
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 2 * len(PORT_RANGE):
            raise RuntimeError("no free ports for redis-server")
        port = _next[0]
        _next[0] = PORT_RANGE.start + (port + 1 - PORT_RANGE.start) % len(PORT_RANGE)
        if _free(port) and (not bus or _free(port + 10000)):
            out.append(port)
    return out


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on {port} exited ({proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"redis-server on {port} did not start")


def cli(port: int, *args: str, timeout: float = 10.0) -> str:
    """``redis-cli -p port args...``'s output (raises on a non-zero exit)."""
    done = subprocess.run(
        [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True, text=True, timeout=timeout, env=_env(), check=True,
    )  # fmt: skip
    return done.stdout


@dataclass
class Server:
    port: int
    args: list[str]
    workdir: Path
    proc: subprocess.Popen | None = None

    def start(self) -> Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, *self.args],
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
        )  # fmt: skip
        _wait_port(self.port, self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL by PID (a crash: no goodbye to the cluster or the Sentinels)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _server(port: int, workdir: Path, *extra: str) -> Server:
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--protected-mode", "no", *extra]  # fmt: skip
    return Server(port, args, workdir / str(port))


@dataclass
class Cluster:
    """Three primaries with one replica each (``redis-cli --cluster create --cluster-replicas 1``)."""

    servers: list[Server] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def nodes(self) -> list[dict[str, str]]:
        """``CLUSTER NODES`` of a live node: ``[{"id", "addr", "flags", "master"}, ...]``."""
        for server in self.servers:
            if server.alive:
                out = cli(server.port, "cluster", "nodes")
                rows = []
                for line in out.strip().splitlines():
                    parts = line.split()
                    rows.append({"id": parts[0], "addr": parts[1].split("@")[0], "flags": parts[2],
                                 "master": parts[3], "slots": " ".join(parts[8:])})  # fmt: skip
                return rows
        raise RuntimeError("no live cluster node")

    def primary_ports(self) -> list[int]:
        return sorted(int(r["addr"].rsplit(":", 1)[1]) for r in self.nodes()
                      if "master" in r["flags"] and "fail" not in r["flags"] and r["slots"])  # fmt: skip

    def replica_of(self, port: int) -> int:
        """The port of the replica of the primary on ``port``."""
        rows = self.nodes()
        primary = next(r["id"] for r in rows if r["addr"].endswith(f":{port}"))
        return next(int(r["addr"].rsplit(":", 1)[1]) for r in rows if r["master"] == primary)

    def server(self, port: int) -> Server:
        return next(s for s in self.servers if s.port == port)

    def wait_ok(self, timeout: float = 15.0, primaries: int = 3) -> None:
        """Until every live node says ``cluster_state:ok`` with ``primaries`` serving primaries."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                states = [cli(s.port, "cluster", "info") for s in self.servers if s.alive]
                if all("cluster_state:ok" in st for st in states) and len(self.primary_ports()) == primaries:
                    return
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the cluster did not become ok")

    def stop(self) -> None:
        for server in self.servers:
            server.kill()


@contextlib.contextmanager
def cluster(workdir: Path, primaries: int = 3, replicas: int = 1) -> Iterator[Cluster]:
    """A fresh cluster for the block; every process is ended by its PID afterwards."""
    count = primaries * (1 + replicas)
    ports = free_ports(count, bus=True)
    result = Cluster()
    try:
        for port in ports:
            result.servers.append(
                _server(port, workdir, "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                        # the other primaries keep serving while one has no successor yet
                        "--cluster-require-full-coverage", "no",
                        "--cluster-replica-validity-factor", "0").start()
            )
        cli(ports[0], "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
            "--cluster-replicas", str(replicas), "--cluster-yes", timeout=30)  # fmt: skip
        result.wait_ok(primaries=primaries)
        yield result
    finally:
        result.stop()


@dataclass
class SentinelSet:
    """One primary, one replica, three Sentinels watching service ``mymaster``."""

    primary: Server
    replica: Server
    sentinels: list[Server]
    service: str = "mymaster"

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def master_port(self) -> int | None:
        for sentinel in self.sentinels:
            if sentinel.alive:
                try:
                    out = cli(sentinel.port, "sentinel", "get-master-addr-by-name", self.service).split()
                except subprocess.CalledProcessError:
                    continue
                if len(out) == 2:
                    return int(out[1])
        return None

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.kill()


@contextlib.contextmanager
def sentinel_set(workdir: Path) -> Iterator[SentinelSet]:
    p_port, r_port, *s_ports = free_ports(5)
    sync = ("--repl-diskless-sync-delay", "0")  # a replica's first sync at once, not after 5 s
    primary = _server(p_port, workdir, *sync)
    replica = _server(r_port, workdir, *sync, "--replicaof", "127.0.0.1", str(p_port))
    sentinels = []
    result = SentinelSet(primary, replica, sentinels)
    try:
        primary.start()
        replica.start()
        for port in s_ports:
            conf = workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\n"
                f"sentinel monitor mymaster 127.0.0.1 {p_port} 2\n"
                "sentinel down-after-milliseconds mymaster 500\n"
                "sentinel failover-timeout mymaster 2000\n"
                "sentinel parallel-syncs mymaster 1\n"
            )
            server = Server(port, [str(conf), "--sentinel"], workdir / f"s{port}")
            sentinels.append(server.start())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            info = cli(p_port, "info", "replication")
            if "connected_slaves:1" in info and "state=online" in info:
                break
            time.sleep(0.05)
        yield result
    finally:
        result.stop()
