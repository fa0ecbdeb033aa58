"""Security of the server: token on public binds, constant-time checks with a failure limit, CORS/origin rules,
upload limits (size, count, type by content, decompression bombs), the `.flx` reader on uploads, and path traversal
in every name, id and path field. Every refused request leaves the library, the job store and the output and home
folders exactly as they were."""

from __future__ import annotations

import io
import os
import socket
import stat
import struct
import subprocess
import zlib

import pytest

TOKEN = "t0ken-for-tests-" + "x" * 24
TRAVERSALS = ("../evil", "..", "/etc/passwd", "a\\..\\b", "a\x00b", "%2e%2e%2fevil", "./x", "~/x")
URL_TRAVERSALS = ("..%2Fevil", "%2e%2e", "%2e%2e%2f%2e%2e%2fetc", "..%5Cevil", "a%00b", "%252e%252e")


def _png(w: int = 8, h: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 100, 50)).save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(w: int, h: int) -> bytes:
    """A valid small PNG whose header claims w x h pixels (a decompression bomb as far as a reader knows)."""
    data = bytearray(_png())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def _content_length(reply: bytes) -> int:
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


@pytest.fixture()
def public(make_app):
    """A TestClient on an app bound to 0.0.0.0 with a token, 3 failures allowed per minute."""
    from fastapi.testclient import TestClient

    from engine.server.deps import ServerLimits

    app, _ = make_app(token=TOKEN, host="0.0.0.0", limits=ServerLimits(max_failures=3))
    with TestClient(app, base_url="http://studio-box:7860") as c:
        yield c


@pytest.fixture()
def with_ava(client, ava_flx):
    r = client.post("/api/characters/import", files={"file": ("ava.flx", ava_flx, "application/octet-stream")})
    assert r.status_code == 200, r.text
    return client


# ----- binding and tokens --------------------------------------------------------------------------------------
def test_public_bind_without_token_refuses_to_start(serve_cmd, env_for, srv_settings, make_app):
    from engine._core.errors import InputError

    proc = subprocess.run(
        serve_cmd("--host", "0.0.0.0", "--port", "1", "--no-token"),
        env=env_for(srv_settings), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--no-token is refused" in lines[0], proc.stderr
    assert "Uvicorn running" not in proc.stdout + proc.stderr
    assert not (srv_settings.home / "server-token").exists()
    with pytest.raises(InputError, match="without an access token"):
        make_app(token=None, host="0.0.0.0")
    with pytest.raises(InputError, match="without an access token"):
        make_app(token=None, host="studio-box.local")  # a name could resolve to anything: not loopback


def test_loopback_names():
    from engine.server.security import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "10.0.0.1", "example.com", ""))


def test_token_generated_once_with_0600_and_printed_once(srv_settings, monkeypatch):
    import typer
    import uvicorn
    from typer.testing import CliRunner

    from engine.cli.serve import serve
    from engine.server.security import read_token, token_path

    ran = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.append(kw))  # the socket is not the subject here
    monkeypatch.setenv("FLX_HOME", str(srv_settings.home))
    monkeypatch.setenv("FLX_WEIGHTS_DIR", str(srv_settings.weights_dir))
    cli = typer.Typer()
    cli.command()(serve)
    first = CliRunner().invoke(cli, ["--host", "0.0.0.0", "--no-worker"])
    assert first.exit_code == 0, first.output
    path = token_path(srv_settings.home)
    token = read_token(srv_settings.home)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(token) >= 40 and first.output.count(token) == 1
    second = CliRunner().invoke(cli, ["--host", "0.0.0.0", "--no-worker"])
    assert second.exit_code == 0 and token not in second.output and str(path) in second.output
    assert read_token(srv_settings.home) == token
    assert [kw["host"] for kw in ran] == ["0.0.0.0", "0.0.0.0"]
    loop = CliRunner().invoke(cli, ["--no-worker"])  # loopback: no token involved
    assert loop.exit_code == 0 and token not in loop.output and "no access token needed" in loop.output


def test_token_file_readable_by_others_is_refused(srv_settings):
    from engine._core.errors import InputError
    from engine.server.security import ensure_token, read_token, token_path

    token, created = ensure_token(srv_settings.home)
    assert created and ensure_token(srv_settings.home) == (token, False)
    os.chmod(token_path(srv_settings.home), 0o644)
    with pytest.raises(InputError, match="chmod 600"):
        read_token(srv_settings.home)


def test_wrong_or_missing_token_is_401_and_the_right_one_passes(public):
    assert public.get("/api/health").json()["auth"] is True  # open: the page needs to know whether to ask
    missing = public.get("/api/characters")
    assert missing.status_code == 401 and "missing access token" in missing.json()["error"]
    wrong = public.get("/api/characters", headers={"Authorization": "Bearer " + TOKEN[:-1] + "y"})
    assert wrong.status_code == 401 and "wrong access token" in wrong.json()["error"]
    assert public.get("/api/characters", headers={"Authorization": "Bearer " + TOKEN}).json() == []
    assert public.get("/api/characters", headers={"Authorization": "Basic " + TOKEN}).status_code == 401


def test_session_cookie_is_httponly_and_strict(public):
    assert public.post("/api/session", json={"token": "nope"}).status_code == 401
    r = public.post("/api/session", json={"token": TOKEN})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"].lower()
    assert "flx_token=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert public.get("/api/characters").status_code == 200  # the client now sends the cookie
    public.delete("/api/session")
    public.cookies.clear()
    assert public.get("/api/characters").status_code == 401


def test_failed_attempts_are_rate_limited(public):
    for _ in range(3):
        assert public.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    locked = public.get("/api/jobs", headers={"Authorization": "Bearer wrong"})
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) >= 1
    assert "too many failed" in locked.json()["error"]
    # while locked out, even the right token is refused (a guesser learns nothing), sign-in too
    assert public.get("/api/jobs", headers={"Authorization": "Bearer " + TOKEN}).status_code == 429
    assert public.post("/api/session", json={"token": TOKEN}).status_code == 429


def test_failure_limiter_window_and_clients():
    from engine.server.errors import RateLimited
    from engine.server.security import FailureLimiter

    now = [1000.0]
    lim = FailureLimiter(2, 60.0, clock=lambda: now[0], max_clients=2)
    lim.fail("a")
    lim.fail("a")
    with pytest.raises(RateLimited) as e:
        lim.check("a")
    assert e.value.retry_after == 60
    lim.check("b")  # other addresses are not affected
    now[0] += 61
    lim.check("a")  # the window passed
    lim.fail("b"), lim.fail("c"), lim.fail("d")  # the oldest tracked address is dropped beyond max_clients
    assert len(lim._fails) == 2


# ----- origins and hosts ---------------------------------------------------------------------------------------
def test_cors_is_off_by_default_and_cross_origin_writes_are_refused(client, snapshot):
    before = snapshot()
    pre = client.options(
        "/api/characters", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in pre.headers
    r = client.post("/api/jobs", json={"name": "x"}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "origin" in r.json()["error"]
    r = client.delete("/api/characters/ava", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    same = client.post("/api/jobs", json={"name": "x"}, headers={"Origin": "http://127.0.0.1:7860"})
    assert same.status_code == 422  # same origin passes the guard (the document itself is incomplete)
    assert snapshot() == before


def test_named_cors_origin_is_allowed_and_wildcards_refused(make_app):
    from fastapi.testclient import TestClient

    from engine._core.errors import InputError

    for bad in ("*", "https://*.studio", "https://a.example/path", "ftp://a.example"):
        with pytest.raises(InputError, match="cors-origin"):
            make_app(cors_origins=[bad])
    app, _ = make_app(cors_origins=["https://tools.studio:8443"])
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        pre = c.options(
            "/api/characters",
            headers={"Origin": "https://tools.studio:8443", "Access-Control-Request-Method": "GET"},
        )
        assert pre.headers["access-control-allow-origin"] == "https://tools.studio:8443"
        other = c.get("/api/characters", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_open_loopback_server_refuses_foreign_host_names(make_app):
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends `Host: evil.example`."""
    from fastapi.testclient import TestClient

    app, _ = make_app()
    with TestClient(app, base_url="http://evil.example:7860") as c:
        r = c.get("/api/characters")
        assert r.status_code == 403 and "not this machine" in r.json()["error"]
    with TestClient(app, base_url="http://localhost:7860") as c:
        assert c.get("/api/characters").status_code == 200


def test_security_headers(client):
    h = client.get("/api/health").headers
    assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in h["content-security-policy"]


# ----- uploads ---------------------------------------------------------------------------------------------------
def test_oversized_uploads_are_413(make_app, snapshot, faces_dir):
    from fastapi.testclient import TestClient

    from engine.server.deps import ServerLimits

    limits = ServerLimits(max_photo_bytes=64 * 1024, max_photos=2, max_flx_bytes=4096)
    app, _ = make_app(limits=limits)
    photo = (faces_dir / "obama.jpg").read_bytes()  # ~100+ KiB
    assert len(photo) > limits.max_photo_bytes
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        before = snapshot()
        one_big = c.post("/api/characters", data={"name": "ava"}, files=[("photos", ("a.jpg", photo, "image/jpeg"))])
        assert one_big.status_code == 413 and "per photo" in one_big.json()["error"]
        small = _png()
        many = [("photos", (f"p{i}.png", small, "image/png")) for i in range(3)]
        too_many = c.post("/api/characters", data={"name": "ava"}, files=many)
        assert too_many.status_code == 413 and "at most 2" in too_many.json()["error"]
        flx = c.post("/api/characters/import", files={"file": ("a.flx", b"\0" * 5000, "application/octet-stream")})
        assert flx.status_code == 413
        body = c.post("/api/jobs", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                      headers={"Content-Type": "application/json"})  # fmt: skip
        assert body.status_code == 413 and body.json()["error"]
    assert snapshot() == before


def test_request_over_the_body_limit_is_refused_before_it_is_read(srv_settings, run_server, tmp_path, snapshot):
    """A Content-Length over the limit is answered 413 at once: the server does not wait for (or read) the body."""
    import urllib.parse

    before = snapshot()
    with run_server(srv_settings, tmp_path / "server.log", "--no-worker") as (base, _proc):
        host, port = urllib.parse.urlsplit(base).hostname, urllib.parse.urlsplit(base).port
        with socket.create_connection((host, port), timeout=60) as s:
            head = (
                "POST /api/characters/import HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                "Content-Type: multipart/form-data; boundary=xyz\r\n"
                f"Content-Length: {50 * 1024**3}\r\n\r\n"
            )
            s.sendall(head.encode() + b"--xyz\r\n")  # 50 GiB announced, a few bytes sent
            reply = b""
            while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < _content_length(reply):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
            reply = reply.decode("latin-1")
        assert reply.startswith("HTTP/1.1 413"), reply[:200]
        assert '"error"' in reply
    assert snapshot()["library"] == before["library"] and snapshot()["outputs"] == before["outputs"]


def test_fake_image_is_415_by_content_not_name(client, snapshot):
    before = snapshot()
    fake = client.post(
        "/api/characters",
        data={"name": "ava"},
        files=[("photos", ("face.png", b"just some text\n" * 20, "image/png"))],
    )
    assert fake.status_code == 415 and "checked by its content" in fake.json()["error"]
    truncated = client.post(
        "/api/characters", data={"name": "ava"}, files=[("photos", ("t.png", _png()[:30], "image/png"))]
    )
    assert truncated.status_code in (415, 422)
    assert snapshot() == before


def test_decompression_bomb_is_refused(client, snapshot):
    before = snapshot()
    for w, h in ((20000, 20000), (60000, 60000)):  # over the engine's bound; over PIL's own bomb limit
        r = client.post(
            "/api/characters", data={"name": "ava"}, files=[("photos", ("b.png", _bomb_png(w, h), "image/png"))]
        )
        assert r.status_code == 413, r.text
        assert "pixels" in r.json()["error"]
    assert snapshot() == before


def test_image_type_comes_from_content(client, faces_dir):
    """A real JPEG named .png is accepted as the JPEG it is (the name is only a label)."""
    photo = (faces_dir / "obama.jpg").read_bytes()
    r = client.post("/api/characters", data={"name": "ava"}, files=[("photos", ("named.png", photo, "image/png"))])
    assert r.status_code == 201, r.text
    assert r.json()["references"][0]["source_filename"] == "named.png"


@pytest.mark.parametrize("kind", ["garbage", "truncated", "tampered", "empty"])
def test_malformed_flx_is_rejected(client, ava_flx, snapshot, kind):
    before = snapshot()
    data = {
        "garbage": b"PK\x03\x04 not a character file" * 10,
        "truncated": ava_flx[: len(ava_flx) // 2],
        "tampered": ava_flx[:-100] + bytes([ava_flx[-100] ^ 0xFF]) + ava_flx[-99:],
        "empty": b"",
    }[kind]
    r = client.post("/api/characters/import", files={"file": ("ava.flx", data, "application/octet-stream")})
    assert r.status_code == 422, r.text
    assert r.json()["error"] and "\n" not in r.json()["error"]
    assert snapshot() == before


# ----- names, ids and paths ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", TRAVERSALS)
def test_traversal_in_form_and_json_fields(with_ava, snapshot, bad):
    c = with_ava
    before = snapshot()
    png = _png(64, 64)
    refused = [
        c.post("/api/characters", data={"name": bad}, files=[("photos", ("a.png", png, "image/png"))]),
        c.post("/api/characters", data={"name": "bob"}, files=[("photos", (bad, png, "image/png"))]),
        c.post("/api/characters/ava/references", files=[("photos", (bad, png, "image/png"))]),
        c.post("/api/characters/ava/variants", json={"name": bad}),
        c.post("/api/characters/import", files={"file": (bad, b"x" * 64, "application/octet-stream")}),
    ]
    job = {"name": "safe", "shots": [{"id": "s", "kind": "still", "prompt": "p", "preset": "tiny-stills-sdxl"}]}
    for variant in (
        {**job, "name": bad},
        {**job, "output": bad},
        {**job, "characters": {"a": bad}, "shots": [{**job["shots"][0], "characters": ["a"]}]},
        {**job, "shots": [{**job["shots"][0], "id": bad}]},
        {**job, "shots": [{**job["shots"][0], "preset": bad}]},
        {**job, "shots": [{"id": "v", "kind": "video", "prompt": "p", "preset": "tiny-video-wan21-i2v-480p",
                           "start_image": bad}]},
        {**job, "shots": [{"id": "q", "kind": "score", "character": "a", "media": [bad]}], "characters": {"a": "ava"}},
    ):  # fmt: skip
        refused.append(c.post("/api/jobs", json=variant))
    for r in refused:
        assert r.status_code in (400, 404, 415, 422), (bad, r.request.url, r.status_code, r.text)
        assert r.json()["error"]
    assert snapshot() == before


@pytest.mark.parametrize("bad", URL_TRAVERSALS)
def test_traversal_in_url_ids_and_output_paths(with_ava, snapshot, bad, srv_settings):
    c = with_ava
    (srv_settings.home / "secret.txt").write_text("do not serve")
    before = snapshot()
    responses = [
        c.get(f"/api/characters/{bad}"),
        c.get(f"/api/characters/{bad}/export"),
        c.get(f"/api/characters/{bad}/references/0.png"),
        c.delete(f"/api/characters/{bad}"),
        c.post(f"/api/characters/{bad}/variants", json={"name": "v"}),
        c.get(f"/api/jobs/{bad}"),
        c.post(f"/api/jobs/{bad}/cancel"),
        c.get(f"/api/jobs/{bad}/events"),
        c.get("/api/outputs", params={"job": bad}),
        c.get(f"/api/outputs/{bad}/x.png"),
    ]
    queued = c.post(
        "/api/jobs",
        json={"name": "j", "shots": [{"id": "s", "kind": "still", "prompt": "p", "preset": "tiny-stills-sdxl"}]},
    ).json()
    before = snapshot()
    responses += [
        c.get(f"/api/outputs/{queued['id']}/{bad}"),
        c.get(f"/api/outputs/{queued['id']}/{bad}/secret.txt"),
        c.get(f"/api/outputs/{queued['id']}/..%2F..%2F..%2Fhome%2Fsecret.txt"),
        c.get(f"/api/outputs/{queued['id']}/%2Fetc%2Fpasswd"),
    ]
    for r in responses:
        assert r.status_code in (400, 403, 404, 405, 422), (bad, r.request.url, r.status_code, r.text[:200])
        assert "do not serve" not in r.text and "root:" not in r.text
    assert c.get("/api/characters/ava").status_code == 200  # nothing was deleted
    assert snapshot() == before


def test_output_path_resolution_stays_inside(tmp_path):
    from engine._core.errors import InputError
    from engine.server.deps import output_file
    from engine.server.errors import NotFound

    out = tmp_path / "batch"
    (out / "shot").mkdir(parents=True)
    (out / "shot" / "a.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("x")
    (out / "shot" / "link.png").symlink_to(tmp_path / "secret.txt")
    assert output_file(out, "shot/a.png") == (out / "shot" / "a.png").resolve()
    for bad in ("../secret.txt", "shot/../../secret.txt", "/etc/passwd", "shot\\a.png", "shot/./a.png", "", "shot//a.png",
                "a\x00b", ".hidden", "shot/.a.png.123-abc.flx-tmp"):  # fmt: skip
        with pytest.raises(InputError):
            output_file(out, bad)
    with pytest.raises(NotFound):
        output_file(out, "shot/link.png")  # a symlink out of the folder
    with pytest.raises(NotFound):
        output_file(out, "shot/missing.png")
