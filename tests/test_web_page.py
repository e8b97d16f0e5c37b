"""The teacher web page (deployments/web): served files and dictionary (fast, no browser), and the whole flow
in headless Chromium against the real stack (key, photo + speech, face-crop preview, job with live progress over
SSE, the video playing, recent jobs, both languages)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments import web
from deployments.jobs import QUEUED, RUNNING, STAGES, TERMINAL

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TERMINAL_STATES = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.include_router(web.router)
    return TestClient(app)


def _dictionary(html: str) -> dict[str, dict[str, str]]:
    found = re.search(r'<script type="application/json" id="i18n">(.*?)</script>', html, re.S)
    assert found, "index.html has no i18n dictionary"
    return json.loads(found.group(1))


# ---- fast: no browser, no Ray ------------------------------------------------------------------------------------

def test_index_serves_both_languages(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    strings = _dictionary(html)
    assert set(strings) == {"en", "zh"}
    assert set(strings["en"]) == set(strings["zh"]), "both languages must have the same keys"
    assert all(v.strip() for lang in strings.values() for v in lang.values()), "empty UI string"
    assert strings["en"]["submit"] == "Make the video" and strings["zh"]["submit"] == "生成视频"
    assert "Make the video" in html and "生成视频" in html
    # every key the markup and the script use exists (templated state_/stage_ keys included)
    used = set(re.findall(r'data-i18n(?:-[a-z-]+)?="(\w+)"', html))
    script = client.get("/static/app.js").text
    used |= set(re.findall(r'\bt\("(\w+)"', script))
    used |= set(re.findall(r'\bsay\([^,]+, "(\w+)"', script))
    used |= set(re.findall(r'detailKey: "(\w+)"', script))
    used |= {f"state_{s}" for s in (QUEUED, RUNNING, *TERMINAL)} | {f"stage_{s}" for s in STAGES}
    assert len(used) > 60
    assert not used - set(strings["en"]), f"missing UI strings: {sorted(used - set(strings['en']))}"
    # every element the script looks up by id exists in the page
    ids = set(re.findall(r'\bid="([\w-]+)"', html))
    wanted = set(re.findall(r'\$\("([\w-]+)"\)', script))
    assert wanted and not wanted - ids, f"app.js uses missing ids: {sorted(wanted - ids)}"


def test_static_assets_exist(client):
    html = client.get("/").text
    assets = set(re.findall(r'(?:src|href)="(/static/[^"]+)"', html))
    assert {"/static/app.js", "/static/app.css", "/static/favicon.svg"} <= assets
    kinds = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert response.headers["content-type"].startswith(kinds[Path(asset).suffix]), asset
        assert response.content == (web.STATIC_DIR / asset.removeprefix("/static/")).read_bytes()
    # offline machines: nothing may come from another host
    for name in ("index.html", "app.js", "app.css"):
        text = (web.STATIC_DIR / name).read_text(encoding="utf-8")
        assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//|@import|url\(\s*["']?(?:https?:)?//""", text), name
    for bad in ("/static/nope.js", "/static/../__init__.py", "/static/%2e%2e/__init__.py", "/static/"):
        assert client.get(bad).status_code == 404, bad


# ---- the whole flow in headless Chromium ------------------------------------------------------------------------

def _driver(artifacts: Path):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(f"headless browser missing ({', '.join(missing)}): `apt-get install chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1366,900", "--lang=en-US", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(artifacts / "chromedriver.log"))
    return webdriver.Chrome(options=options, service=service)


def _artifacts() -> Path:
    path = Path(os.environ.get("SONIC_TEST_ARTIFACTS") or ROOT / "out" / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_browser_flow(serve_stack):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from tests.helpers import astronaut_png, speech_wav

    artifacts = _artifacts()
    shot = artifacts / "web-page.png"
    shot.unlink(missing_ok=True)
    driver = _driver(artifacts)
    try:
        wait = WebDriverWait(driver, 60)
        find = lambda css: driver.find_element(By.CSS_SELECTOR, css)  # noqa: E731
        driver.get(serve_stack.url + "/")
        assert find("h1").text == "Sonic Serve"
        assert find("#submit").text == "Make the video"

        # the hand-rolled SSE parser: CRLF split across chunks, comments, multi-line data
        events = driver.execute_script("""
            const out = []; const p = window.sonic.sseParser((e) => out.push(e));
            const chunks = ['event: state\\r', '\\ndata: {"a"', ':1}\\r\\n\\r\\n: keep-alive\\n\\n',
                            'data: x\\ndata: y\\n', '\\n'];
            for (const c of chunks) p.push(c);
            return out;""")
        assert [(e["event"], e["data"]) for e in events] == [("state", '{"a":1}'), ("message", "x\ny")]

        # language switch: every string comes from the dictionary
        Select(find("#lang")).select_by_value("zh")
        assert find("#submit").text == "生成视频"
        assert driver.execute_script("return document.documentElement.lang") == "zh-CN"
        Select(find("#lang")).select_by_value("en")
        assert find("#submit").text == "Make the video"

        # API key, kept in localStorage; the page checks it against /v1/tenant
        find("#api-key").send_keys(serve_stack.api_key)
        find("#key-save").click()
        wait.until(lambda d: "tenant" in find("#key-status").text)
        assert find("#key-status").text == "Key accepted — tenant local."
        assert driver.execute_script("return localStorage.getItem('sonic.apiKey')") == serve_stack.api_key

        # photo + speech through the file pickers; the face-crop preview draws the photo with the boxes
        find("#photo-input").send_keys(str(astronaut_png()))
        find("#audio-input").send_keys(str(speech_wav(2.0)))
        Select(find("#framing")).select_by_value("crop")
        wait.until(lambda d: "face(s) found" in find("#crop-status").text or "No face" in find("#crop-status").text)
        assert "face(s) found" in find("#crop-status").text, find("#crop-status").text
        preview = driver.execute_script("return window.sonic.state.preview")
        x0, y0, x1, y1 = preview["crop_box"]
        assert preview["width"] == 512 and preview["height"] == 512 and 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
        assert driver.execute_script("return document.getElementById('crop-canvas').width") == 512
        wait.until(lambda d: " s" in find("#audio-info").text)    # the audio's duration was read

        # small settings; a bad value first: the problem+json is shown with its field
        find("#advanced summary").click()
        find("#steps").send_keys("0")
        find("#submit").click()
        wait.until(lambda d: find("#error").is_displayed())
        assert "steps" in find("#error-list").text
        assert find("#steps").get_attribute("aria-invalid") == "true"
        find("#steps").clear()
        find("#steps").send_keys("2")
        find("#min_resolution").clear()
        find("#min_resolution").send_keys("128")
        Select(find("#fps")).select_by_value("12.5")
        find("#submit").click()

        wait.until(lambda d: find("#job").is_displayed() and find("#job-id").text)
        job_id = find("#job-id").text
        assert not find("#error").is_displayed()
        WebDriverWait(driver, 600, poll_frequency=0.5).until(
            lambda d: driver.execute_script("return window.sonic.state.job.state") in TERMINAL_STATES)
        job = driver.execute_script("return window.sonic.state.job")
        assert job["state"] == "succeeded", job.get("error")
        assert find("#job-state").text == "succeeded"
        assert driver.execute_script("return window.sonic.state.streamEvents") > 0, "no progress came over SSE"
        assert driver.execute_script("return document.getElementById('job-progress').value") == 1

        # the video plays from its presigned URL; the download link points at it
        wait.until(lambda d: driver.execute_script(
            "const v = document.getElementById('video'); return v.error ? 'error' : v.readyState >= 1"))
        media = driver.execute_script(
            "const v = document.getElementById('video');"
            "return {ready: v.readyState, duration: v.duration, error: v.error && v.error.code, src: v.currentSrc}")
        assert media["error"] is None and media["ready"] >= 1 and media["duration"] > 0, media
        assert find("#download").get_attribute("href")
        # (the same object; the signature may be a newer one's)
        assert media["src"].split("?")[0] == job["result"]["video_url"].split("?")[0]

        # my recent jobs lists it, as succeeded (the table re-renders on refresh: read the row in one script call)
        def current_row(d) -> str:
            return d.execute_script("const r = document.querySelector('#recent-body tr.current');"
                                    "return r ? r.innerText : ''")

        wait.until(lambda d: job_id in current_row(d) and "succeeded" in current_row(d))
        row_text = current_row(driver)
        assert job_id in row_text and "succeeded" in row_text, row_text

        # no script errors (failed requests such as the deliberate 422 are not script errors)
        problems = [e["message"] for e in driver.get_log("browser")
                    if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
        assert not problems, problems

        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1366, min(max(height + 120, 900), 4000))
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.5)
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert shot.is_file() and shot.stat().st_size > 10_000
