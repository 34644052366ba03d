"""bench --rpc with an aarch64 bundle. On 127.0.0.1 only an x86 server exists, so this checks
what can be checked here: the bundle is uploaded (model.so only) and a server of the wrong
architecture gives one clear line, not TVM's remote traceback. Local timing is refused."""

from __future__ import annotations

import shutil
import socket
import time

import pytest

import graphopt
from graphopt.cli import main
from graphopt.models import DEFAULT_MODEL
from graphopt.tuning import rpc

pytestmark = [
    pytest.mark.arm,
    pytest.mark.skipif(
        shutil.which("aarch64-linux-gnu-g++") is None, reason="needs aarch64-linux-gnu-g++"
    ),
]

KEY = "graphopt-arm-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def x86_server():
    """A tracker and one (x86) server on 127.0.0.1, stopped at the end."""
    port = _free_port()
    tracker = rpc.start_group(rpc.tracker_args("127.0.0.1", port))
    address = rpc.TrackerAddress("127.0.0.1", port)
    server = None
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        server = rpc.start_group(rpc.server_args(address, KEY, "127.0.0.1", _free_port()))
        rpc.wait_for_key(address, KEY, 1, timeout=30)
        yield address
    finally:
        if server is not None:
            rpc.stop_group(server)
        rpc.stop_group(tracker)


@pytest.fixture(scope="module")
def arm_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("rpc") / "digits-arm"
    return graphopt.compile(DEFAULT_MODEL, out, target="arm", target_options={"board": "rpi4"})


@pytest.mark.slow  # starting a tracker and a server takes ~25 s on a loaded machine
def test_bench_rpc_wrong_architecture_is_one_line(x86_server, arm_bundle, capsys):
    args = ["bench", str(arm_bundle.directory), "--rpc", str(x86_server), "--key", KEY]
    rc = main([*args, "--runs", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"key '{KEY}' cannot load model.so" in err and "aarch64-linux-gnu" in err


def test_local_bench_of_a_bundle_is_refused(arm_bundle, capsys):
    rc = main(["bench", str(arm_bundle.directory), "--vs", str(DEFAULT_MODEL)])
    err = capsys.readouterr().err
    assert rc == 2 and "built for aarch64" in err and "--rpc" in err
