"""The HTTP API (FastAPI TestClient and a real `flx serve` on 127.0.0.1) over the real engine: characters from real
photos, `.flx` round trips, a tiny still batch run by the server's worker process, live progress by server-sent
events, outputs with their metadata. No pipeline is mocked."""

from __future__ import annotations

import json

import pytest

CONTRACT_PATHS = (
    "/api/health",
    "/api/session",
    "/api/characters",
    "/api/characters/{ref}",
    "/api/characters/{ref}/references/{index}.png",
    "/api/characters/{ref}/pack.png",
    "/api/characters/{ref}/references",
    "/api/characters/{ref}/variants",
    "/api/characters/{ref}/export",
    "/api/characters/import",
    "/api/jobs",
    "/api/jobs/{batch_id}",
    "/api/jobs/{batch_id}/cancel",
    "/api/jobs/{batch_id}/events",
    "/api/outputs",
    "/api/outputs/{batch_id}/{path}",
)


def still_job(name: str = "api-still") -> dict:
    """One tiny still on the tiny SDXL twin (sizes as `flx demo` uses)."""
    return {
        "version": 1,
        "name": name,
        "defaults": {"still": {"preset": "tiny-stills-sdxl", "steps": 2, "width": 64, "height": 64}},
        "shots": [{"id": "portrait", "kind": "still", "prompt": "studio portrait photo of a person", "seed": 3}],
    }


def test_health_and_openapi_schema(client):
    health = client.get("/api/health").json()
    assert health["ok"] is True and health["auth"] is False and health["version"]
    paths = client.get("/openapi.json").json()["paths"]
    missing = [p for p in CONTRACT_PATHS if p not in paths]
    assert not missing, f"routes missing from the OpenAPI schema: {missing}"
    presets = {p["name"]: p for p in client.get("/api/presets").json()}
    assert presets["tiny-stills-faceid-sdxl"]["kind"] == "still" and presets["tiny-stills-faceid-sdxl"]["identity"]
    assert presets["tiny-video-wan21-vace-14b-standin"]["kind"] == "video"
    assert presets["tiny-stills-sdxl"]["identity"] is False


def test_character_lifecycle_from_a_real_photo(client, make_app, faces_dir, srv_settings, tmp_path):
    from fastapi.testclient import TestClient

    assert client.get("/api/characters").json() == []
    photo = (faces_dir / "obama.jpg").read_bytes()
    r = client.post(
        "/api/characters",
        data={"name": "ava", "profile": "hair_colour: auburn\ntags: [hero, lead]"},
        files=[("photos", ("obama.jpg", photo, "image/jpeg"))],
    )
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["name"] == "ava" and made["version"] == 1 and made["encoders"] == ["dlib-resnet-v1"]
    assert made["profile"]["hair_colour"] == "auburn"
    ref = made["references"][0]
    assert ref["source_filename"] == "obama.jpg" and ref["quality"]["status"] in ("ok", "warn", "fail")
    assert ref["quality"]["checks"], "the reference's quality checks are listed"

    rows = client.get("/api/characters").json()
    assert [r["name"] for r in rows] == ["ava"]
    assert rows[0]["thumbnail"] == ref["image"] and rows[0]["quality"] == made["quality"]
    assert client.get("/api/characters", params={"tag": "lead"}).json()[0]["id"] == made["id"]
    assert client.get("/api/characters", params={"tag": "villain"}).json() == []
    assert client.get("/api/characters", params={"search": "AV"}).json()[0]["id"] == made["id"]

    img = client.get(ref["image"])
    assert (
        img.status_code == 200 and img.headers["content-type"] == "image/jpeg" and img.content[:3] == b"\xff\xd8\xff"
    )

    shown = client.get("/api/characters/ava").json()
    assert shown["id"] == made["id"] and [v["version"] for v in shown["versions"]] == [1]
    assert client.get(f"/api/characters/{made['id']}").json()["name"] == "ava"  # by id too

    variant = client.post("/api/characters/ava/variants", json={"name": "ava-winter", "wardrobe": "red parka"})
    assert variant.status_code == 201, variant.text
    assert variant.json()["parent"]["character_id"] == made["id"]
    assert variant.json()["profile"]["wardrobe_baseline"] == "red parka"

    exported = client.get("/api/characters/ava/export")
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/octet-stream"
    assert 'filename="ava-v1.flx"' in exported.headers["content-disposition"]

    # round trip: the download imports into another server's library and exports to the same bytes
    other = srv_settings.model_copy(update={"home": tmp_path / "other-home"})
    app2, _ = make_app(settings=other)
    with TestClient(app2, base_url="http://127.0.0.1:7860") as c2:
        imp = c2.post(
            "/api/characters/import", files={"file": ("ava.flx", exported.content, "application/octet-stream")}
        )
        assert imp.status_code == 200, imp.text
        assert imp.json() | {"warnings": []} == {
            "status": "added", "id": made["id"], "name": "ava", "version": 1, "warnings": [],
        }  # fmt: skip
        assert c2.get("/api/characters/ava/export").content == exported.content
        again = c2.post("/api/characters/import", files={"file": ("ava.flx", exported.content, "application/x")})
        assert again.json()["status"] == "unchanged"

    assert client.delete("/api/characters/ava").json() == {"deleted": made["id"]}
    gone = client.get("/api/characters/ava")
    assert gone.status_code == 404 and "no character" in gone.json()["error"]
    assert [r["name"] for r in client.get("/api/characters").json()] == ["ava-winter"]


def test_add_references_makes_a_new_version(client, ava_flx, faces_dir):
    client.post("/api/characters/import", files={"file": ("ava.flx", ava_flx, "application/octet-stream")})
    png = (faces_dir / "32bit.png").read_bytes()  # obama2 as RGBA PNG: the same person, another format
    r = client.post("/api/characters/ava/references", files=[("photos", ("rgba.png", png, "image/png"))])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == 2 and len(body["references"]) == 3
    assert [v["version"] for v in body["versions"]] == [1, 2]
    stranger = (faces_dir / "biden.jpg").read_bytes()
    refused = client.post("/api/characters/ava/references", files=[("photos", ("b.jpg", stranger, "image/jpeg"))])
    assert refused.status_code in (400, 422) and refused.json()["error"]
    assert client.get("/api/characters/ava").json()["version"] == 2


def test_queued_job_is_cancelled_and_listed(client, ava_flx):
    r = client.post("/api/jobs", json=still_job("to-cancel"))
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["status"] == "queued" and info["name"] == "to-cancel"
    assert [s["id"] for s in info["shots"]] == ["portrait"]
    assert [b["id"] for b in client.get("/api/jobs").json()] == [info["id"]]
    assert client.post(f"/api/jobs/{info['id']}/cancel").json()["status"] == "cancelled"
    assert client.get(f"/api/jobs/{info['id']}").json()["status"] == "cancelled"
    # the stream of a finished batch is one `end` event
    with client.stream("GET", f"/api/jobs/{info['id']}/events") as s:
        text = "".join(s.iter_text())
    assert "event: end" in text and '"status": "cancelled"' in text
    missing = client.get("/api/jobs/nope")
    # 404 once engine.jobs.store raises its own BatchNotFound (an InputError today: 400)
    assert missing.status_code == 404 and "no batch 'nope'" in missing.json()["error"]


def test_job_with_unknown_character_or_preset_is_refused(client, snapshot):
    before = snapshot()
    job = still_job("bad") | {"characters": {"a": "nobody"}}
    job["shots"][0]["characters"] = ["a"]
    r = client.post("/api/jobs", json=job)
    assert r.status_code == 404 and "nobody" in r.json()["error"]
    bad_preset = still_job("bad2")
    bad_preset["defaults"]["still"]["preset"] = "no-such-preset"
    r = client.post("/api/jobs", json=bad_preset)
    assert r.status_code == 422 and "no-such-preset" in r.json()["error"]
    r = client.post("/api/jobs", json={"name": "x", "shots": [{"id": "a", "kind": "dance"}]})
    assert r.status_code == 422 and "kind must be one of" in r.json()["error"]
    assert snapshot() == before


def test_server_worker_runs_a_queued_job_with_live_progress(make_app, srv_settings, run_server, tmp_path):
    """Submitted while no worker runs (a server without one, then stopped): the next `flx serve` starts its worker,
    which takes the queued batch from the store, renders it, and streams progress; outputs come with metadata."""
    import httpx
    from fastapi.testclient import TestClient

    app, _ = make_app()
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        queued = c.post("/api/jobs", json=still_job()).json()
    assert queued["status"] == "queued"

    with run_server(srv_settings, tmp_path / "server.log") as (base, _proc):
        with httpx.Client(base_url=base, timeout=300) as http:
            assert http.get("/api/health").json()["worker"]["alive"] is True
            events = []
            with http.stream("GET", f"/api/jobs/{queued['id']}/events") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                name = None
                for line in stream.iter_lines():
                    if line.startswith("event:"):
                        name = line.split(":", 1)[1].strip()
                    elif line.startswith("data:"):
                        events.append((name, json.loads(line.split(":", 1)[1])))
                        if name == "end":
                            break
            assert events[-1][0] == "end" and events[-1][1]["status"] == "done", events[-1]
            assert all(n == "progress" for n, _ in events[:-1]) and len(events) >= 2
            assert any(d["status"] == "running" for _, d in events), "progress while the shot ran"

            outs = http.get("/api/outputs", params={"job": queued["id"]}).json()
            pngs = [o for o in outs if o["path"].endswith(".png")]
            assert pngs, outs
            first = pngs[0]
            assert first["shot"] == "portrait" and first["kind"] == "still" and "score" in first
            assert first["metadata"]["seed"] == 3 and first["metadata"]["preset"] == "tiny-stills-sdxl"
            got = http.get(first["url"])
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"
            on_disk = srv_settings.outputs_dir.resolve() / "batch" / "api-still" / first["path"]
            assert got.content == on_disk.read_bytes()
            assert http.get(f"/api/jobs/{queued['id']}").json()["shots"][0]["status"] == "done"


@pytest.mark.parametrize("field", ["photos", "file"])
def test_upload_without_files_is_a_clean_error(client, field):
    url = "/api/characters" if field == "photos" else "/api/characters/import"
    r = client.post(url, data={"name": "ava"} if field == "photos" else {})
    assert r.status_code == 422 and r.json()["error"]


def _events(http, batch_id: str, *, until):
    """Server-sent events of a batch as (name, data) until `until(name, data)` is true or the stream ends."""
    name = None
    with http.stream("GET", f"/api/jobs/{batch_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
                yield name, data
                if until(name, data):
                    return


def test_restart_resumes_an_interrupted_batch(srv_settings, run_server, tmp_path):
    """The server is killed (SIGKILL: a crash) while its worker renders; the worker dies with it, the batch stays
    `running` with a dead runner, and the next `flx serve` finishes it: the interrupted shot runs again."""
    import httpx

    from engine.jobs.store import JobStore

    job = still_job("resume")
    job["defaults"]["still"]["steps"] = 8
    job["shots"] = [{"id": f"s{i}", "kind": "still", "prompt": f"portrait {i}", "seed": i} for i in range(3)]
    with run_server(srv_settings, tmp_path / "first.log") as (base, proc):
        with httpx.Client(base_url=base, timeout=300) as http:
            batch = http.post("/api/jobs", json=job).json()
            seen = list(_events(http, batch["id"], until=lambda n, d: d["status"] == "running" and d["current"]))
            assert seen[-1][1]["current"] == "s0"
            proc.kill()  # the whole server, at once
            proc.wait()
    with JobStore(srv_settings.home / "jobs.sqlite", readonly=True) as store:
        interrupted = store.batch(batch["id"])
    assert interrupted.status == "running" and interrupted.counts.get("done", 0) < 3, interrupted.counts

    with run_server(srv_settings, tmp_path / "second.log") as (base, _proc):
        with httpx.Client(base_url=base, timeout=300) as http:
            end = list(_events(http, batch["id"], until=lambda n, d: n == "end"))[-1]
            assert end[0] == "end" and end[1]["status"] == "done", end
            shots = {s["id"]: s for s in http.get(f"/api/jobs/{batch['id']}").json()["shots"]}
    assert all(s["status"] == "done" for s in shots.values())
    assert shots["s0"]["attempts"] >= 2, "the shot the crash interrupted ran again"


def test_pack_sheet_and_reference_images(client, ava_flx):
    """A version with pack images (as `flx pack` stores them) shows its contact sheet; a version without has none."""
    import hashlib
    import io

    from PIL import Image

    from engine.characters import from_bytes, to_bytes
    from engine.characters.schema import PackImage

    client.post("/api/characters/import", files={"file": ("ava.flx", ava_flx, "application/octet-stream")})
    assert client.get("/api/characters/ava").json()["pack_sheet"] is None
    assert client.get("/api/characters/ava/pack.png").status_code == 404

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buf, format="PNG")
    png = buf.getvalue()
    ch = from_bytes(ava_flx).character.next_version("pack")
    ch.pack = [
        PackImage(shot="front-neutral", label="front", preset="tiny-stills-sdxl", seed=1, score=81.0,
                  image_sha256=hashlib.sha256(png).hexdigest(), image_png=png)
    ]  # fmt: skip
    r = client.post("/api/characters/import", files={"file": ("ava2.flx", to_bytes(ch), "application/octet-stream")})
    assert r.json()["status"] == "new-version"
    detail = client.get("/api/characters/ava").json()
    assert detail["version"] == 2 and detail["pack"][0]["score"] == 81.0 and "image_png" not in detail["pack"][0]
    sheet = client.get(detail["pack_sheet"])
    assert sheet.status_code == 200 and sheet.content.startswith(b"\x89PNG")
    assert client.get("/api/characters/ava/references/9.png").status_code == 404


def test_profile_text_is_parsed_never_opened(client, faces_dir, snapshot):
    """`profile` is YAML/JSON text: a path in it is a string, not a file to read; invalid profiles are refused."""
    before = snapshot()
    photo = [("photos", ("obama.jpg", (faces_dir / "obama.jpg").read_bytes(), "image/jpeg"))]
    for profile, needle in (
        ("/etc/passwd", "mapping"),
        ("hair_colour: [unclosed", "profile"),
        ("no_such_field: 1\nage_range: 5", "profile"),
    ):
        r = client.post("/api/characters", data={"name": "ava", "profile": profile}, files=photo)
        assert r.status_code in (400, 422), r.text
        assert needle in r.json()["error"]
    assert snapshot() == before
