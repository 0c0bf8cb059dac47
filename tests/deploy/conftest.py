"""Shared fixtures for the delivery and observability checks: the real confab binary, and
throwaway PostgreSQL and Redis servers like the Rust tests use."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def binary():
    return os.environ.get("CONFAB_BIN") or str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "confab")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {seconds} s")


def start_confab(*args, env_extra=None):
    http_port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFAB_")}
    env.update(env_extra or {})
    proc = subprocess.Popen(
        [binary(), "serve", "--listen", f"127.0.0.1:{http_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{http_port}/healthz")
    return proc, {"http": http_port, "metrics": metrics_port}


@pytest.fixture(scope="session")
def confab(tmp_path_factory):
    """The real binary in the embedded shape, on free ports."""
    proc, ports = start_confab("--data-dir", str(tmp_path_factory.mktemp("data")))
    yield ports
    proc.terminate()
    proc.wait(timeout=20)


def pg_bin(name):
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    return str(versions[-1] / name) if versions else name


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL (run as the postgres user when we are root)."""
    root = os.geteuid() == 0
    prefix = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] if root else []
    tmp = tempfile.mkdtemp(prefix="confab-pg")
    if root:
        shutil.chown(tmp, "postgres", "postgres")
    data = f"{tmp}/data"
    subprocess.run(prefix + [pg_bin("initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
                   check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen(prefix + [pg_bin("postgres"), "-D", data, "-p", str(port), "-c", "listen_addresses=127.0.0.1",
                                      "-c", f"unix_socket_directories={tmp}", "-c", "fsync=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        if subprocess.run([pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"]).returncode == 0:
            break
        time.sleep(0.05)
    yield f"postgres://postgres@127.0.0.1:{port}/postgres"
    proc.terminate()
    proc.wait(timeout=20)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def redis():
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="confab-redis")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=20)
    shutil.rmtree(tmp, ignore_errors=True)
