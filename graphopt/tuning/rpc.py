"""TVM RPC: start a tracker or a server cleanly, check a tracker, measure an artifact remotely.

TVM's tracker and server each spawn a child (`tvm.exec.popen_worker`) that holds the socket and
outlives its parent, so a plain kill leaves the port taken. graphopt starts them in their own
process group and stops the whole group.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GraphoptError


class RPCError(GraphoptError):
    """The tracker is unreachable, or no server is registered under the key."""


@dataclass(frozen=True)
class TrackerAddress:
    host: str
    port: int

    @staticmethod
    def parse(text: str) -> TrackerAddress:
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise RPCError(f"tracker address '{text}' is not HOST:PORT (e.g. 127.0.0.1:9190)")
        return TrackerAddress(host, int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def start_group(args: Sequence[str]) -> subprocess.Popen:
    """Start a TVM RPC process in its own process group (see the module docstring)."""
    return subprocess.Popen([sys.executable, "-m", *args], start_new_session=True)


def stop_group(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop a process group started by start_group: SIGTERM, then SIGKILL for survivors."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; its socket-holding child may not be
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


REMOTE_WARNING = (
    "warning: serving on {host}, reachable from other machines: TVM RPC runs the native code "
    "any client uploads, without authentication; use it only on a trusted network"
)


def check_listen(host: str, port: int, allow_remote: bool) -> bool:
    """Refuse what would fail or expose the machine, before starting anything.

    Returns whether the address is reachable from other machines (the caller warns). A port
    out of range or in use is an RPCError, not "running" followed by a traceback.
    """
    if not 1 <= port <= 65535:
        raise RPCError(f"--port {port} is out of range (1-65535)")
    remote = not _is_loopback(host)
    if remote and not allow_remote:
        raise RPCError(
            f"--host {host} would accept connections from other machines, and TVM RPC runs "
            "uploaded native code without authentication; pass --allow-remote to do it anyway"
        )
    try:
        with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
            sock.bind((host, port))
    except OSError as err:
        raise RPCError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
    return remote


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as err:
        raise RPCError(f"cannot resolve --host {host}: {err.strerror or err}") from err
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_reachable(tracker: TrackerAddress) -> None:
    """A server whose tracker is down would run silently, registered nowhere."""
    try:
        socket.create_connection((tracker.host, tracker.port), timeout=3).close()
    except OSError as err:
        raise RPCError(f"cannot reach the RPC tracker at {tracker}: {err.strerror or err}") from err


def tracker_args(host: str, port: int) -> list[str]:
    return [
        "tvm.exec.rpc_tracker",
        "--host",
        host,
        "--port",
        str(port),
        "--port-end",
        str(port + 1),
        "--silent",
    ]


def server_args(tracker: TrackerAddress, key: str, host: str, port: int) -> list[str]:
    return [
        "tvm.exec.rpc_server",
        "--host",
        host,
        "--port",
        str(port),
        "--port-end",
        str(port + 100),
        "--tracker",
        str(tracker),
        "--key",
        key,
        "--silent",
    ]


def run_foreground(args: Sequence[str], what: str) -> int:
    """Run a tracker/server until Ctrl-C or SIGTERM, then stop its whole process group."""
    proc = start_group(args)
    print(f"{what} running (pid {proc.pid}); Ctrl-C stops it", file=sys.stderr, flush=True)

    def _stop(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop_group(proc)
        print(f"{what} stopped", file=sys.stderr)
        return 0


def connect(tracker: TrackerAddress) -> Any:
    """A tracker session; fails in seconds, not after TVM's 60 s of silent retries."""
    from tvm import rpc

    try:
        socket.create_connection((tracker.host, tracker.port), timeout=3).close()
    except OSError as err:
        raise RPCError(f"cannot reach the RPC tracker at {tracker}: {err.strerror or err}") from err
    try:
        return rpc.connect_tracker(tracker.host, tracker.port)
    except Exception as err:  # noqa: BLE001 - TVM raises bare RuntimeError/OSError here
        raise RPCError(f"cannot reach the RPC tracker at {tracker}: {_last_line(err)}") from err


def servers_for_key(tracker: TrackerAddress, key: str) -> int:
    """How many servers are registered under `key`; RPCError if none or unreachable."""
    summary = connect(tracker).summary()
    queue = summary.get("queue_info", {}).get(key, {})
    count = int(queue.get("free", 0)) + int(queue.get("pending", 0))
    servers = [s for s in summary.get("server_info", []) if s.get("key", "").endswith(key)]
    count = max(count, len(servers))
    if count == 0:
        known = sorted(summary.get("queue_info", {})) or ["none"]
        raise RPCError(
            f"no RPC server is registered under key '{key}' at {tracker} "
            f"(keys there: {', '.join(known)}); start one with "
            f"`graphopt rpc server --tracker {tracker} --key {key}`"
        )
    return count


def request(tracker: TrackerAddress, key: str, timeout: float = 30.0) -> Any:
    servers_for_key(tracker, key)
    try:
        return connect(tracker).request(key, priority=1, session_timeout=int(timeout))
    except Exception as err:  # noqa: BLE001
        raise RPCError(f"no session from key '{key}' at {tracker}: {_last_line(err)}") from err


def remote_latency(
    artifact_dir: Path,
    tracker: TrackerAddress,
    key: str,
    inputs: dict,
    runs: int = 50,
    repeat: int = 1,
) -> list[float]:
    """Upload the artifact's library, run it on the remote device, return per-run ms."""
    from tvm import runtime

    from ..artifact import load

    art = load(artifact_dir)
    arrays = art.check_inputs(inputs)
    remote = request(tracker, key)
    remote.upload(str(art.library_path))
    try:
        lib = remote.load_module(art.library_path.name)
    except Exception as err:  # noqa: BLE001 - TVM re-raises the remote error as RuntimeError
        triple = art.manifest["target"]["options"].get("triple", "?")
        raise RPCError(
            f"the server under key '{key}' cannot load {art.library_path.name} (built for "
            f"{triple}; the board must match it and run TVM {art.manifest['versions']['tvm']}): "
            f"{_last_line(err)}"
        ) from err
    # The manifest's device: a GPU server (a `cuda` artifact) times on its GPU; the time
    # evaluator synchronizes the device after each run.
    dev = remote.device(str(art.manifest["target"].get("device", "cpu")), 0)
    vm = runtime.vm.VirtualMachine(lib, dev)
    args = [runtime.tensor(a, dev) for a in arrays]
    vm.set_input("main", *args)
    timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=runs, min_repeat_ms=0)
    result = timer("main")
    return [1000.0 * r for r in result.results]


def wait_for_key(tracker: TrackerAddress, key: str, count: int, timeout: float = 30.0) -> None:
    """Block until `count` servers have registered under `key` (for scripts and tests)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if servers_for_key(tracker, key) >= count:
                return
        except RPCError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise RPCError(f"only some servers registered under '{key}' within {timeout:.0f}s")
        time.sleep(0.3)


def _last_line(err: Exception) -> str:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def tuning_runner(tracker: TrackerAddress, key: str) -> Any:
    """A MetaSchedule runner measuring on every server under `key`, in parallel."""
    from tvm.s_tir import meta_schedule as ms

    servers = servers_for_key(tracker, key)
    config = ms.runner.RPCConfig(
        tracker_host=tracker.host,
        tracker_port=tracker.port,
        tracker_key=key,
        session_timeout_sec=120,
    )
    return ms.runner.RPCRunner(config, max_workers=servers)
