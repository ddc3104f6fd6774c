"""Redis for tests: the machine's server at 127.0.0.1:6379 (shared, so tests use their own key prefix), or
a private ``redis-server`` on a free port for tests that stop or restart it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from tests.support.net import free_port, free_ports

REDIS_URL = os.environ.get("TOKENYARD_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_url_for(kind: str, request: pytest.FixtureRequest) -> str:
    """The Redis a test parameter names: ``redis-cluster`` is the session's private Cluster (started at the
    first test that asks for it), anything else the machine's Redis."""
    if kind == "redis-cluster":
        url: str = request.getfixturevalue("redis_cluster")
        return url
    return REDIS_URL


async def delete_prefix(prefix: str, url: str = REDIS_URL) -> None:
    """Delete every key of a meter prefix (its keys all start with ``{prefix}``)."""
    client = aioredis.Redis.from_url(url)
    try:
        async for key in client.scan_iter(match=f"{{{prefix}}}*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def raw_client(url: str = REDIS_URL) -> AsyncIterator[aioredis.Redis]:
    """A plain client (strings in, strings out) for reading and writing keys behind a store's back."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


class RedisServer:
    """A private redis-server with an append-only file, so a restart keeps what was written."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) the server and wait until it answers."""
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_ping(self.port)

    def stop(self) -> None:
        """Stop the server (SIGTERM: it finishes its append-only file first)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


class RedisClusterServers:
    """A private Redis Cluster: ``redis-server`` masters (and replicas) on free ports, joined by redis-cli.

    A node that stops answering fails over after 1 s (``cluster-node-timeout``), so tests can watch it.
    Needs Redis 7 or newer (``cluster-port``).
    """

    def __init__(self, folder: Path, masters: int = 3, replicas: int = 0) -> None:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server and redis-cli are not installed (apt-get install redis-server)")
        self.folder = folder
        self.replicas = replicas  # per master
        nodes = masters * (1 + replicas)
        ports = free_ports(2 * nodes)  # all at once, so no two are the same
        self.ports, self._bus_ports = ports[:nodes], ports[nodes:]
        self.url = f"redis+cluster://127.0.0.1:{self.ports[0]}"  # any node: the client finds the rest
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        """Start the nodes, assign the slots, and wait until every node says the cluster is ok."""
        for port, bus_port in zip(self.ports, self._bus_ports, strict=True):
            options = {
                "port": port,
                "bind": "127.0.0.1",
                "cluster-enabled": "yes",
                "cluster-port": bus_port,
                "cluster-config-file": self.folder / f"nodes-{port}.conf",
                "cluster-node-timeout": 1000,
                "repl-diskless-sync-delay": 0,  # replicas sync at once, not after 5 s
                "save": "",
                "appendonly": "no",
                "dir": self.folder,
            }
            argv = ["redis-server"] + [
                part for name, value in options.items() for part in (f"--{name}", str(value))
            ]
            self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            _wait_for_ping(port)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *nodes,
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(_node_ready(port) for port in self.ports):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not become ok")

    def master_of(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot now."""
        client = redis.Redis(port=self.ports[0], decode_responses=True)
        try:
            slot = client.cluster("keyslot", key)
            for first, last, master, *_ in client.cluster("slots"):
                if first <= slot <= last:
                    return int(master[1])
        finally:
            client.close()
        raise RuntimeError(f"no master serves slot {slot}")

    def replication_offsets(self, port: int) -> tuple[int, list[int]]:
        """A master's replication offset (how much it has written) and what each replica acknowledged."""
        client = redis.Redis(port=port, decode_responses=True)
        try:
            info = client.info("replication")
        finally:
            client.close()
        acked = [int(v["offset"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return int(info["master_repl_offset"]), acked

    def kill(self, port: int) -> None:
        """Kill one node with SIGKILL (its replica, if it has one, takes over about 2 s later)."""
        proc = self.procs[self.ports.index(port)]
        proc.kill()
        proc.wait(10)

    def stop(self) -> None:
        """Stop every node."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            proc.wait(10)
        self.procs = []


def _wait_for_ping(port: int) -> None:
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    raise RuntimeError(f"redis-server on port {port} did not start")


def _node_ready(port: int) -> bool:
    """Whether a node sees the cluster ok and, if it is a replica, has synced with its master."""
    client = redis.Redis(port=port, socket_connect_timeout=0.5, decode_responses=True)
    try:
        if client.cluster("info").get("cluster_state") != "ok":
            return False
        replication = client.info("replication")
        return bool(replication["role"] == "master" or replication.get("master_link_status") == "up")
    except redis.RedisError:
        return False
    finally:
        client.close()
