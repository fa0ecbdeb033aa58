"""Server-test fixtures: per-test engine homes over the session's tiny weights, a real character made once from the
test photos, app/client builders, a real `flx serve` on 127.0.0.1, and a snapshot of everything a refused request
must leave unchanged (library content, job store, output and home folders)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SIDE_FILES = ("-wal", "-shm", "-journal")


@pytest.fixture()
def srv_settings(tmp_path, tiny_weights_dir):
    from engine._core.settings import EngineSettings

    return EngineSettings(
        home=tmp_path / "home", weights_dir=tiny_weights_dir, outputs_dir=tmp_path / "outputs", device="cpu",
        offline=True,
    )  # fmt: skip


@pytest.fixture(scope="session")
def ava_flx(tmp_path_factory, faces_dir) -> bytes:
    """A real character ('ava', two photos of person A, dlib embeddings) as `.flx` bytes, made once."""
    from engine._core.settings import EngineSettings
    from engine.api import Engine

    home = tmp_path_factory.mktemp("ava-home")
    chars = Engine(EngineSettings(home=home, device="cpu", offline=True)).characters
    ch = chars.create("ava", [faces_dir / "obama.jpg", faces_dir / "obama2.jpg"], profile={"tags": ["hero"]})
    return chars.export_bytes(ch.id)


@pytest.fixture()
def make_app(srv_settings):
    """`make_app(token=None, host="127.0.0.1", **kw) -> (app, engine)` over this test's home (no worker)."""
    from engine.api import Engine
    from engine.jobs.store import default_store_path
    from engine.server.app import create_app

    def build(*, token=None, host="127.0.0.1", settings=None, **kw):
        s = settings or srv_settings
        engine = Engine(s)
        kw.setdefault("worker", False)
        return create_app(engine, store=default_store_path(s), token=token, host=host, **kw), engine

    return build


@pytest.fixture()
def client(make_app):
    """A TestClient on a loopback app without a token (Host 127.0.0.1, as a browser on this machine sends)."""
    from fastapi.testclient import TestClient

    app, _ = make_app()
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        yield c


def _tree(root: Path) -> dict[str, str]:
    out = {}
    if root.exists():
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.name.endswith(SIDE_FILES) and not p.name.endswith(".sqlite"):
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[str(p.relative_to(root)) + "/"] = ""
    return out


def _library_dump(settings) -> list:
    import sqlite3

    path = settings.library_file
    if not path.exists():
        return [[], []]  # = an empty library (reads create the file)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        heads = db.execute("SELECT id, name, latest_version, archived FROM characters ORDER BY id").fetchall()
        versions = db.execute("SELECT character_id, version, sha256 FROM versions ORDER BY 1, 2").fetchall()
    finally:
        db.close()
    return [heads, versions]


def _store_dump(settings) -> list:
    import sqlite3

    path = Path(settings.home) / "jobs.sqlite"
    if not path.exists():
        return [[], []]
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [
            db.execute("SELECT id, name, status, seq FROM batches ORDER BY id").fetchall(),
            db.execute("SELECT batch_id, shot_id, status FROM shots ORDER BY 1, 2").fetchall(),
        ]
    finally:
        db.close()


@pytest.fixture()
def snapshot(srv_settings, tmp_path):
    """`snapshot() -> state`: library versions, job store rows, and every file (sha256) under the home, the
    outputs folder and the test's tmp dir root (where an escaped write would land)."""

    def take():
        return {
            "library": _library_dump(srv_settings),
            "store": _store_dump(srv_settings),
            "home": _tree(Path(srv_settings.home)),
            "outputs": _tree(Path(srv_settings.outputs_dir)),
            "tmp": sorted(p.name for p in tmp_path.iterdir()),
        }

    return take


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(settings) -> dict[str, str]:
    return {
        **os.environ,
        "FLX_HOME": str(settings.home),
        "FLX_WEIGHTS_DIR": str(settings.weights_dir),
        "FLX_OUTPUTS_DIR": str(settings.outputs_dir),
        "FLX_DEVICE": "cpu",
        "FLX_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
    }


def serve_command(*args: str) -> list[str]:
    """`flx serve ARGS` as a subprocess command."""
    return [sys.executable, "-m", "engine.cli.main", "serve", *args]


@contextlib.contextmanager
def running_server(settings, log_path: Path, *args: str, ready_s: float = 180.0):
    """A real `flx serve` on 127.0.0.1 (free port) for `settings`; yields (base URL, process); SIGTERM at the end
    (uvicorn's graceful shutdown stops the worker process too)."""
    import httpx

    port = free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        serve_command("--host", "127.0.0.1", "--port", str(port), *args),
        cwd=REPO, env=server_env(settings), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"flx serve exited with {proc.returncode}: {log_path.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/api/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"flx serve did not answer in {ready_s:.0f} s: {log_path.read_text()}")
            time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture()
def run_server():
    """`run_server(settings, log_path, *serve_args)`: the `running_server` context manager."""
    return running_server


@pytest.fixture()
def serve_cmd():
    return serve_command


@pytest.fixture()
def env_for():
    return server_env
