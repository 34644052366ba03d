"""`graphopt rpc`: remote hosts need --allow-remote (and get a warning); bind errors and an
unreachable tracker are one-line errors before anything starts."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("role", ["tracker", "server"])
def test_remote_host_needs_allow_remote(run_cli, role):
    extra = ["--tracker", "127.0.0.1:9190", "--key", "k"] if role == "server" else []
    result = run_cli("rpc", role, "--host", "0.0.0.0", "--port", _free_port(), *extra)
    result.assert_user_error("--allow-remote", "without authentication")


def test_allow_remote_warns(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "graphopt.cli", "rpc", "tracker", "--host", "0.0.0.0"]
        + ["--port", str(port), "--allow-remote"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert err.startswith("warning: serving on 0.0.0.0"), err
    assert "without authentication" in err


@pytest.mark.parametrize("port", [0, 70000, -1])
def test_port_out_of_range(run_cli, port):
    run_cli("rpc", "tracker", "--port", port).assert_user_error("out of range")


def test_port_in_use(run_cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run_cli("rpc", "tracker", "--port", port).assert_user_error("in use")


def test_server_with_unreachable_tracker(run_cli):
    tracker = f"127.0.0.1:{_free_port()}"
    result = run_cli("rpc", "server", "--tracker", tracker, "--key", "k", "--port", _free_port())
    result.assert_user_error("cannot reach the RPC tracker")


def test_tracker_port_out_of_range_in_address(run_cli):
    result = run_cli("rpc", "server", "--tracker", "127.0.0.1:99999", "--key", "k")
    result.assert_user_error("HOST:PORT")
