"""The web page end to end in headless Chromium, against the server (`create_app`, what `flx serve` runs, with its
batch worker process) under uvicorn on 127.0.0.1, and the tiny pipelines.

A person's path through the page: upload a photo in the create form, see the character and its reference checks,
submit a tiny still job from the job form, watch it finish in the live job list, and see the image and its
consistency score in the gallery. A screenshot is saved to the test's tmp dir (and, with FLX_UPDATE_SCREENSHOT=1,
to docs/images/web-page.png, which the README shows). The still uses the FaceID tiny twin, so it has a character to be scored against (the plain
`tiny-stills-sdxl` renders no character, hence no score); tiny random weights draw no face, so the score is 0.

The browser is Debian's `chromium` driven by its `chromedriver` through the W3C WebDriver HTTP protocol (a dozen
endpoints, spoken with httpx, which the `serve` extra already has: no selenium). On a machine without them the
test skips with the reason; CI (`.ci/run`) installs them.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "engine" / "server" / "static"
SCREENSHOT = REPO / "docs" / "images" / "web-page.png"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver element key
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)
STILL_PRESET = "tiny-stills-faceid-sdxl"  # the identity twin: the still is scored against the character
FACEID_ENCODER = "tiny-arcface-buffalo_l-w600k_r50"
PAGE_TIMEOUT_S = 300.0  # a tiny still on two shared CPU cores, with the worker's first model load


# ----- a small WebDriver client -----------------------------------------------------------------------------
def _browser_binaries() -> tuple[str | None, str | None]:
    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriverError(RuntimeError):
    pass


class Browser:
    """One chromedriver process with one headless Chromium session."""

    def __init__(self, chromium: str, chromedriver: str, profile_dir: Path, log_path: Path, size=(1280, 900)):
        import httpx

        port = _free_port()
        self._log = open(log_path, "wb")  # closed in close()
        self._proc = subprocess.Popen(
            [chromedriver, f"--port={port}", "--allowed-ips=127.0.0.1"], stdout=self._log, stderr=self._log
        )
        self._http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120.0)
        self.sid: str | None = None
        try:
            self._wait_ready()
            options = {"binary": chromium, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"]}
            caps = {"browserName": "chrome", "goog:chromeOptions": options, "goog:loggingPrefs": {"browser": "ALL"}}
            self.sid = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]
            self.resize(*size)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise WebDriverError(f"chromedriver exited with {self._proc.returncode}")
            with contextlib.suppress(httpx.TransportError, ValueError, KeyError):
                if self._http.get("/status").json()["value"]["ready"]:
                    return
            time.sleep(0.05)
        raise WebDriverError("chromedriver did not become ready in 30 s")

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        r = self._http.request(method, path, json=body if body is not None else ({} if method == "POST" else None))
        value = r.json().get("value")
        if r.status_code != 200:
            msg = value.get("message", "") if isinstance(value, dict) else str(value)
            raise WebDriverError(f"{method} {path}: {r.status_code} {msg.splitlines()[0] if msg else ''}")
        return value

    def _s(self, path: str) -> str:
        return f"/session/{self.sid}{path}"

    def resize(self, width: int, height: int) -> None:
        self._call("POST", self._s("/window/rect"), {"width": width, "height": height})

    def get(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url})

    def find(self, css: str) -> str:
        return self._call("POST", self._s("/element"), {"using": "css selector", "value": css})[ELEMENT]

    def type(self, css: str, text: str) -> None:
        """Type into an element; into an `<input type=file>`, the absolute path of the file to upload."""
        self._call("POST", self._s(f"/element/{self.find(css)}/value"), {"text": text})

    def clear(self, css: str) -> None:
        self._call("POST", self._s(f"/element/{self.find(css)}/clear"))

    def click(self, css: str) -> None:
        self._call("POST", self._s(f"/element/{self.find(css)}/click"))

    def run(self, script: str, *args) -> Any:
        """Run `script` (a function body; `arguments[i]` are `args`) in the page and return its value."""
        return self._call("POST", self._s("/execute/sync"), {"script": script, "args": list(args)})

    def wait_for(self, script: str, *args, what: str, timeout_s: float = 60.0) -> Any:
        """Poll `script` until it returns something truthy; on timeout fail naming `what` and the page's message."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.run(script, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                said = self.run("const f = document.getElementById('flash'); return f ? f.textContent : '';")
                raise AssertionError(f"timed out waiting for {what} (the page says: {said!r})")
            time.sleep(0.25)

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (the window is grown to the content's height first)."""
        height, chrome = self.run(
            "return [Math.ceil(document.body.getBoundingClientRect().height), window.outerHeight - window.innerHeight];"
        )
        self.resize(1280, max(600, min(int(height) + int(chrome) + 16, 3000)))
        png = base64.b64decode(self._call("GET", self._s("/screenshot")))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return path

    def console_errors(self) -> list[str]:
        """SEVERE browser-console entries since the last call (script errors, failed loads)."""
        entries = self._call("POST", self._s("/se/log"), {"type": "browser"}) or []
        return [e.get("message", "") for e in entries if e.get("level") == "SEVERE"]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.sid:
                self._call("DELETE", self._s(""))
        self._http.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._log.close()


# ----- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser_bins():
    chromium, chromedriver = _browser_binaries()
    if not chromium or not chromedriver:
        pytest.skip(
            "headless browser test: Debian's chromium and chromium-driver are not installed "
            "(apt-get install -y chromium chromium-driver; .ci/run installs them)"
        )
    return chromium, chromedriver


@pytest.fixture(scope="module")
def server(browser_bins, tmp_path_factory, tiny_weights_dir):
    """The app of `flx serve` (`create_app`, with its GPU worker process) under uvicorn on 127.0.0.1, its own home
    with the session's tiny weights (tests/conftest.py). Yields (base URL, settings)."""
    import httpx

    from engine._core.settings import EngineSettings
    from engine.api import Engine
    from engine.jobs.store import default_store_path
    from engine.server.app import create_app

    root = tmp_path_factory.mktemp("web-server")
    settings = EngineSettings(home=root / "home", weights_dir=tiny_weights_dir, outputs_dir=root / "outputs")
    app = create_app(Engine(settings), store=default_store_path(settings), token=None, host="127.0.0.1")
    srv, thread, sock, base = _serve(app)
    try:
        deadline = time.monotonic() + 120
        while not httpx.get(f"{base}/api/health", timeout=5).json()["worker"]["alive"]:
            if time.monotonic() > deadline:
                raise AssertionError("the server's batch worker did not start in 120 s")
            time.sleep(0.1)
        yield base, settings
    finally:
        _stop(srv, thread, sock)


def _serve(app) -> tuple[Any, Any, socket.socket, str]:
    """uvicorn on a socket bound to a free 127.0.0.1 port before it starts (no port race); returns when it answers."""
    import threading

    import httpx
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("the server did not start in 60 s")
        time.sleep(0.05)
    with contextlib.suppress(httpx.TransportError):
        httpx.get(f"{base}/api/health", timeout=5)
    return srv, thread, sock, base


def _stop(srv, thread, sock) -> None:
    srv.should_exit = True
    thread.join(timeout=60)
    sock.close()


@pytest.fixture()
def browser(browser_bins, tmp_path):
    b = Browser(*browser_bins, profile_dir=tmp_path / "chromium-profile", log_path=tmp_path / "chromedriver.log")
    yield b
    b.close()


# ----- the tests --------------------------------------------------------------------------------------------
def _console_problems(browser: Browser, *allowed: str) -> list[str]:
    """Console errors, but for the optional /api/presets (the page falls back to the names it carries) and `allowed`
    URL parts."""
    return [m for m in browser.console_errors() if not any(a in m for a in ("/api/presets", *allowed))]


def _give_character_the_faceid_embedding(settings, name: str) -> None:
    """The page's character has the default (dlib) embedding; the FaceID twin also needs its ArcFace twin's, as
    `flx character reembed` adds it (the server has no route for it)."""
    from engine.api import Engine
    from engine.characters import reembed_in_library
    from engine.identity.registry import get_analyzer

    eng = Engine(settings)
    with eng.library() as lib:
        reembed_in_library(lib, name, get_analyzer(FACEID_ENCODER, settings=settings))


def test_page_creates_a_character_runs_a_still_and_shows_it_scored(server, browser, faces_dir, tmp_path):
    import httpx

    base, settings = server
    browser.get(f"{base}/#/create")
    browser.wait_for("return !document.getElementById('view-create').hidden;", what="the create form")

    # 1. create a character from one uploaded photo through the form
    name = "ava"
    browser.type("#create-name", name)
    browser.type("#create-photos", str(faces_dir / "obama.jpg"))
    browser.click("#create-submit")
    browser.wait_for(
        "return location.hash.startsWith('#/character/') && document.getElementById('char-name').textContent;",
        what="the new character's page",
        timeout_s=PAGE_TIMEOUT_S,
    )
    assert browser.run("return document.getElementById('char-name').textContent;") == name
    refs = browser.run(
        "return [...document.querySelectorAll('#char-refs .reference')].map(c => ({"
        "name: c.querySelector('.name').textContent, checks: c.querySelectorAll('.checks-list li').length}));"
    )
    assert [r["name"] for r in refs] == ["obama.jpg"]
    assert refs[0]["checks"] > 0  # its quality checks are listed
    browser.wait_for(
        "const i = document.querySelector('#char-refs img'); return i && i.complete && i.naturalWidth > 0;",
        what="the reference crop to load",
    )
    browser.screenshot(tmp_path / "character.png")

    # 2. the library shows it with its thumbnail and quality badge. A second character's name is markup, as a
    # stranger's .flx could carry: it must show as text everywhere (innerHTML would make an <img> and run its
    # handler); the same string through innerHTML is the negative control.
    hostile = 'bob <img src=x onerror="window.__pwned=1">'
    with open(faces_dir / "biden.jpg", "rb") as f:
        made = httpx.post(
            f"{base}/api/characters", data={"name": hostile}, files={"photos": ("b.jpg", f)}, timeout=300
        )
    assert made.status_code == 201, made.text
    browser.get(f"{base}/#/library")
    card = browser.wait_for(
        "const c = [...document.querySelectorAll('#library-list .character')].find("
        "  x => x.querySelector('.name').textContent === arguments[0]);"
        "const img = c && c.querySelector('img');"
        "return img && img.complete && img.naturalWidth ? {badge: c.querySelector('.badge').textContent} : null;",
        name,
        what="the library card with its thumbnail",
    )
    assert card["badge"].lower() in ("ok", "warn", "fail")
    names = browser.run("return [...document.querySelectorAll('#library-list .name')].map(n => n.textContent);")
    assert sorted(names) == sorted([name, hostile])
    browser.get(f"{base}/#/submit")
    browser.wait_for("return document.querySelectorAll('#job-characters input').length === 2;", what="job form")
    views = (
        ("#/library", "#library-list"),
        ("#/submit", "#job-characters"),
        (f"#/character/{made.json()['id']}", "#char-name"),
    )
    for view, where in views:
        browser.get(f"{base}/{view}")
        browser.wait_for(
            "const e = document.querySelector(arguments[0]); return e && e.textContent.includes(arguments[1]);",
            where,
            hostile,
            what=f"the name on {view}",
        )
        assert browser.run("return document.querySelectorAll('img[src=\"x\"]').length;") == 0, view
        assert browser.run("return window.__pwned === undefined;"), view
    control = browser.run(
        "const t = document.createElement('template'); t.innerHTML = arguments[0];"  # inert: nothing loads
        "return t.content.querySelectorAll('img').length;",
        hostile,
    )
    assert control == 1
    assert httpx.delete(f"{base}/api/characters/{made.json()['id']}", timeout=60).status_code == 200
    _give_character_the_faceid_embedding(settings, name)

    # 3. submit a tiny still of the character from the job form
    browser.get(f"{base}/#/submit")
    browser.wait_for(
        "return [...document.querySelectorAll('#job-characters input')].some(i => i.value === arguments[0]);",
        name,
        what="the character in the job form",
    )
    browser.run(
        "const box = [...document.querySelectorAll('#job-characters input')].find(i => i.value === arguments[0]);"
        "box.click();",
        name,
    )
    for field, value in (("#job-name", "web-still"), ("#job-preset", STILL_PRESET), ("#job-seed", "7")):
        browser.clear(field)
        browser.type(field, value)
    for field, value in (("#job-width", "64"), ("#job-height", "64"), ("#job-steps", "2")):
        browser.type(field, value)
    doc = browser.run("return JSON.parse(document.getElementById('job-preview').textContent);")
    (alias,) = doc["characters"]
    assert doc == {
        "version": 1,
        "name": "web-still",
        "characters": {alias: name},
        "shots": [
            {
                "id": "still-1",
                "kind": "still",
                "preset": STILL_PRESET,
                "prompt": "studio portrait photo, soft light",
                "characters": [alias],
                "seed": 7,
                "width": 64,
                "height": 64,
                "steps": 2,
                "candidates": 1,
            }
        ],
    }
    browser.click("#job-submit")

    # 4. the live list shows it, then it finishes
    browser.wait_for("return location.hash === '#/jobs';", what="the job list")
    browser.wait_for(
        "return [...document.querySelectorAll('#jobs-list .job')].some(j => j.textContent.includes('web-still'));",
        what="the submitted job in the list",
    )
    status = browser.wait_for(
        "const j = [...document.querySelectorAll('#jobs-list .job')].find(j => j.textContent.includes('web-still'));"
        "const s = j && ['done', 'failed', 'cancelled'].find(c => j.classList.contains(c));"
        "return s ? {status: s, text: j.textContent, bar: j.querySelector('progress').value} : null;",
        what="the job to finish",
        timeout_s=PAGE_TIMEOUT_S,
    )
    assert status["status"] == "done", status["text"]
    assert status["bar"] == 1  # shots 1/1
    assert browser.run("return document.getElementById('jobs-mode').textContent;") == "(live)"  # SSE, not polling

    # 5. the gallery shows the rendered image and its consistency score
    browser.get(f"{base}/#/gallery")
    shown = browser.wait_for(
        "const f = document.querySelector('#gallery-list .output-card');"
        "const img = f && f.querySelector('img');"
        "return img && img.complete && img.naturalWidth ? {w: img.naturalWidth, h: img.naturalHeight,"
        "  score: f.querySelector('.score').textContent, path: f.dataset.path} : null;",
        what="the still in the gallery",
    )
    assert (shown["w"], shown["h"]) == (64, 64)
    assert shown["path"].startswith("still-1/") and shown["path"].endswith(".png")
    api_outputs = browser.run(
        "const id = document.querySelector('#gallery-list .batch').dataset.id;"
        "return fetch('/api/outputs?job=' + encodeURIComponent(id)).then(r => r.json());"
    )
    still = next(o for o in api_outputs if o["path"] == shown["path"])
    assert isinstance(still["score"], int | float)  # scored: the character was given
    assert shown["score"] == f"consistency {still['score']:.1f}%"

    # 6. the overview page, for the README; looked at by a person when it changes
    browser.get(f"{base}/#/")
    browser.wait_for(
        "const i = document.querySelector('#gallery-list .output-card img');"
        "const t = document.querySelector('#library-list .character img');"
        "return i && i.complete && i.naturalWidth && t && t.complete && t.naturalWidth;",
        what="the overview with its images",
    )
    shot = browser.screenshot(tmp_path / "web-page.png")
    if os.environ.get("FLX_UPDATE_SCREENSHOT") == "1":  # the README's picture: refreshed on request, not by CI
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
    assert shot.stat().st_size > 10_000
    assert _console_problems(browser) == []


def test_page_asks_for_the_token_signs_in_and_retries(browser, tmp_path):
    """With a token, the first API call gets 401: the page shows the token field; a wrong token is refused with the
    server's message; the right one sets the session cookie and the call is retried (the library appears)."""
    from engine._core.settings import EngineSettings
    from engine.api import Engine
    from engine.server.app import create_app

    token = "web-test-token-0123456789abcdef"
    settings = EngineSettings(home=tmp_path / "home", outputs_dir=tmp_path / "outputs")
    app = create_app(Engine(settings), store=None, token=token, host="127.0.0.1", worker=False)
    srv, thread, sock, base = _serve(app)
    try:
        browser.get(f"{base}/#/library")
        browser.wait_for("return !document.getElementById('auth').hidden;", what="the token field")
        assert browser.run("return document.getElementById('server-info').textContent;").endswith("token auth")
        browser.type("#auth-token", "wrong-token")
        browser.click("#auth-form button")
        said = browser.wait_for("return document.getElementById('auth-error').textContent;", what="the refusal")
        assert "token" in said.lower()
        assert not browser.run("return document.getElementById('auth').hidden;")
        browser.clear("#auth-token")
        browser.type("#auth-token", token)
        browser.click("#auth-form button")
        browser.wait_for("return document.getElementById('auth').hidden;", what="the token field to go")
        browser.wait_for(
            "return !document.getElementById('library-empty').hidden;", what="the (empty) library after the retry"
        )
        assert browser.run("return fetch('/api/characters').then(r => r.status);") == 200  # the cookie is set
        assert browser.run("return document.cookie;") == ""  # ... and HttpOnly: no script can read it
    finally:
        _stop(srv, thread, sock)


def test_job_form_builds_job_documents_the_schema_accepts(browser, tmp_path):
    """The form's document for each kind (still, clip, sequence) passes the job-file schema (`parse_job`: every
    shot's own bounds), carries what was typed, and a value out of bounds is refused by that schema (the control)."""
    from engine._core.errors import ConfigError
    from engine._core.settings import EngineSettings
    from engine.api import Engine
    from engine.jobs.specs import parse_job
    from engine.server.app import create_app

    settings = EngineSettings(home=tmp_path / "home", outputs_dir=tmp_path / "outputs")
    srv, thread, sock, base = _serve(create_app(Engine(settings), store=None, token=None, host="127.0.0.1"))
    try:
        browser.get(f"{base}/#/submit")
        browser.wait_for("return !document.getElementById('view-submit').hidden;", what="the job form")

        def fill(kind: str, preset: str, **fields: str) -> dict:
            browser.run(
                "const k = document.getElementById('job-kind'); k.value = arguments[0];"
                "k.dispatchEvent(new Event('change', {bubbles: true}));",
                kind,
            )
            for field, value in {"job-preset": preset, **fields}.items():
                browser.clear(f"#{field}")
                browser.type(f"#{field}", value)
            return browser.run("return JSON.parse(document.getElementById('job-preview').textContent);")

        still = fill("still", "tiny-stills-sdxl", **{"job-candidates": "2", "job-steps": "3"})
        clip = fill("video", "tiny-video-wan21-t2v-1.3b", **{"job-seconds": "1.5", "job-fps": "12"})
        browser.run("document.getElementById('job-motion').value = 'high';")
        sequence = fill(
            "sequence", "tiny-video-wan21-vace-14b", **{"job-beats": "2 | walks in\n1.5 | turns around\nwaves"}
        )
        for doc in (still, clip, sequence):
            job = parse_job(doc, source="page")
            assert [s.kind for s in job.shots] == [doc["shots"][0]["kind"]]
        assert still["shots"][0] | {"candidates": 2, "steps": 3} == still["shots"][0]
        assert clip["shots"][0]["seconds"] == 1.5 and clip["shots"][0]["fps"] == 12
        assert sequence["shots"][0]["shots"] == [
            {"seconds": 2, "prompt": "walks in"},
            {"seconds": 1.5, "prompt": "turns around"},
            {"prompt": "waves"},
        ]
        assert "prompt" not in sequence["shots"][0]  # a sequence's prompts are its beats
        too_many = fill("still", "tiny-stills-sdxl", **{"job-candidates": "99"})
        with pytest.raises(ConfigError, match="candidates"):
            parse_job(too_many, source="page")
        assert _console_problems(browser, "/api/jobs ") == []  # a server without a job store: no /api/jobs
    finally:
        _stop(srv, thread, sock)


def test_page_has_no_external_assets_no_html_sinks_and_knows_every_preset():
    """It works without internet (no URL off this server); its script never turns data into markup; its built-in
    preset list is the presets folder's."""
    import re

    js = (STATIC / "app.js").read_text("utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js, f"app.js uses {sink}: build elements and set textContent instead"

    for f in ("index.html", "app.js", "app.css"):
        text = (STATIC / f).read_text("utf-8")
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), f
        assert "@import" not in text and "url(http" not in text, f
    html = (STATIC / "index.html").read_text("utf-8")
    listed = set(re.findall(r'<option value="([^"]+)"></option>', html.split('id="preset-list"', 1)[1]))
    on_disk = {p.stem for p in (REPO / "configs" / "presets").glob("*.yaml")}
    assert listed == on_disk, f"update the preset datalist in index.html: {sorted(on_disk ^ listed)}"
