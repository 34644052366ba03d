"""TVM RPC on 127.0.0.1: graphopt's tracker/server wrappers, remote bench, errors, clean stop."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import graphopt
from graphopt.cli import main
from graphopt.models import DEFAULT_MODEL
from graphopt.tuning import rpc

KEY = "graphopt-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "graphopt.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    return err


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def cluster():
    """A tracker and two servers started through `graphopt rpc`, stopped at the end."""
    port = _free_port()
    tracker = _cli("rpc", "tracker", "--port", str(port))
    address = rpc.TrackerAddress("127.0.0.1", port)
    deadline = time.monotonic() + 20
    while _port_free(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    servers = [
        _cli("rpc", "server", "--tracker", str(address), "--key", KEY, "--port", str(_free_port()))
        for _ in range(2)
    ]
    try:
        rpc.wait_for_key(address, KEY, 2, timeout=30)
        yield address
    finally:
        for proc in servers:
            _stop(proc)
        _stop(tracker)
    assert _port_free(port), "tracker's socket outlived graphopt rpc tracker"


def test_two_servers_registered(cluster):
    assert rpc.servers_for_key(cluster, KEY) == 2


def test_bench_remote(cluster, tmp_path, capsys):
    art = graphopt.compile(DEFAULT_MODEL, tmp_path / "digits")
    x = np.zeros((1, 1, 8, 8), "float32")
    samples = rpc.remote_latency(tmp_path / "digits", cluster, KEY, {"input": x}, runs=5)
    assert len(samples) == 5 and all(s > 0 for s in samples)
    rc = main(["bench", str(art.directory), "--rpc", str(cluster), "--key", KEY, "--runs", "5"])
    assert rc == 0
    assert "remote (graphopt-test at" in capsys.readouterr().out


def test_unknown_key_is_a_clear_error(cluster, tmp_path, capsys):
    graphopt.compile(DEFAULT_MODEL, tmp_path / "d")
    rc = main(["bench", str(tmp_path / "d"), "--rpc", str(cluster), "--key", "no-such-key"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "no RPC server is registered under key 'no-such-key'" in err
    assert f"keys there: {KEY}" in err


def test_unreachable_tracker_fails_fast(tmp_path, capsys):
    graphopt.compile(DEFAULT_MODEL, tmp_path / "d")
    start = time.monotonic()
    rc = main(["bench", str(tmp_path / "d"), "--rpc", f"127.0.0.1:{_free_port()}", "--key", KEY])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach the RPC tracker" in err and "Traceback" not in err
    assert time.monotonic() - start < 15


def test_bad_tracker_address():
    with pytest.raises(rpc.RPCError, match="HOST:PORT"):
        rpc.TrackerAddress.parse("localhost")


def _tune_over(cluster, key: str, db) -> int:
    """`graphopt tune` of the bundled model, 4 trials, measured through the tracker."""
    args = ["tune", str(DEFAULT_MODEL), "--db", str(db), "--trials", "4"]
    return main([*args, "--rpc", str(cluster), "--key", key])


@pytest.mark.tuning
@pytest.mark.slow
def test_tune_over_rpc(cluster, tmp_path, capsys, monkeypatch):
    from tvm.s_tir import meta_schedule as ms

    remote_runs = []
    run = ms.runner.RPCRunner.run
    monkeypatch.setattr(
        ms.runner.RPCRunner,
        "run",
        lambda self, inputs: remote_runs.append(len(inputs)) or run(self, inputs),
    )
    rc = _tune_over(cluster, KEY, tmp_path / "db")
    assert rc == 0
    captured = capsys.readouterr()
    assert "trials 0 -> " in captured.out
    assert f"on 2 RPC server(s) under key '{KEY}'" in captured.err
    assert sum(remote_runs) >= 4  # the candidates (and the default-vs-tuned check) ran remotely


def test_tune_with_unknown_key_is_a_clear_error(cluster, tmp_path, capsys):
    rc = _tune_over(cluster, "no-such-key", tmp_path / "db")
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "no RPC server is registered under key 'no-such-key'" in err
    assert not (tmp_path / "db").exists() or not any((tmp_path / "db").rglob("*.json"))
