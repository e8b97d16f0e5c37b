"""The load test: its traffic model (fast, no services) and a bounded headless Locust run against the whole
app on a local Ray (session fixture ``serve_stack``: tiny weights; 2 s clips, 2 steps, 128 px).
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from loadtest.lms_profile import DEFAULT_MIX, MORNING_BURST, Settings, SettingsError, burst_users

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
RUN_TIME_S = 40         # Locust's -t: new jobs start only within this window
STOP_TIMEOUT_S = 60     # then running users get this long to finish their job
SMOKE_ENV = {
    "SONIC_LOAD_PARAMS": json.dumps({"steps": 2, "min_resolution": 128}),
    "SONIC_LOAD_SCALE": "0.2",          # short clips 0.4-2 s, the rest capped:
    "SONIC_LOAD_MIN_SECONDS": "1",
    "SONIC_LOAD_MAX_SECONDS": "2",
    "SONIC_LOAD_WAIT": "[0, 1]",
    "SONIC_LOAD_POLL_S": "0.5",
}


# -- the traffic model -------------------------------------------------------------------------------------
def test_default_mix_is_mostly_short_clips():
    settings = Settings.from_env({})
    rng = random.Random(0)
    drawn = [settings.pick_clip(rng) for _ in range(4000)]
    share = Counter(name for name, _ in drawn)
    assert abs(share["short"] / 4000 - 0.70) < 0.03 and abs(share["long"] / 4000 - 0.05) < 0.015
    for name, seconds in drawn:
        (clip,) = [c for c in DEFAULT_MIX if c.name == name]
        assert clip.lo <= seconds <= clip.hi
    presets = Counter(settings.pick_preset(rng) for _ in range(2000))
    assert set(presets) == {"quality", "fast"} and presets["quality"] > presets["fast"]


def test_tiny_runs_scale_and_cap_clip_lengths():
    settings = Settings.from_env({**SMOKE_ENV, "SONIC_LOAD_PRESETS": "fast"})
    rng = random.Random(1)
    lengths = {settings.pick_clip(rng)[1] for _ in range(500)}
    assert min(lengths) == 1.0 and max(lengths) == 2.0 and len(lengths) > 3
    assert settings.longest() == 2.0
    assert settings.params == {"steps": 2, "min_resolution": 128}
    assert {settings.pick_preset(rng) for _ in range(50)} == {"fast"}


@pytest.mark.parametrize("env, field", [
    ({"SONIC_LOAD_PROGRESS": "websocket"}, "SONIC_LOAD_PROGRESS"),
    ({"SONIC_LOAD_MIX": '{"short": [70, 10, 2]}'}, "SONIC_LOAD_MIX"),
    ({"SONIC_LOAD_PARAMS": "steps=2"}, "SONIC_LOAD_PARAMS"),
    ({"SONIC_LOAD_MIN_SECONDS": "0.1"}, "SONIC_LOAD_MIN_SECONDS"),
    ({"SONIC_LOAD_MAX_SECONDS": "-3"}, "SONIC_LOAD_MAX_SECONDS"),
])
def test_bad_settings_name_the_variable(env, field):
    with pytest.raises(SettingsError, match=field):
        Settings.from_env(env)


def test_morning_burst_ramps_peaks_and_tails_off():
    total, peak = 1000.0, 40
    users = [burst_users(t, total, peak) for t in range(0, 1000, 10)]
    assert users[0] == round(peak * MORNING_BURST[0][1])
    assert max(users) == peak and users.index(peak) == 25          # the rush is over after a quarter
    assert users[40] == peak and users[-1] == round(peak * 0.15)  # plateau, then the tail
    assert all(b >= a for a, b in zip(users[:25], users[1:26], strict=True))
    assert burst_users(total, total, peak) is None


def test_locust_loads_the_locustfile():
    out = subprocess.run([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--list"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LmsBackend" in out.stdout


# -- a bounded run against the local stack -----------------------------------------------------------------
def _stats(prefix: Path) -> list[dict[str, str]]:
    with open(f"{prefix}_stats.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _print_table(rows: list[dict[str, str]]) -> None:
    print(f"\n{'Type':<7} {'Name':<38} {'reqs':>5} {'fails':>5} {'median':>8} {'avg':>8} {'max':>8} "
          f"{'avg bytes':>10}")
    for row in rows:
        print(f"{row['Type']:<7} {row['Name']:<38} {row['Request Count']:>5} {row['Failure Count']:>5} "
              f"{float(row['Median Response Time']):>8.0f} {float(row['Average Response Time']):>8.0f} "
              f"{float(row['Max Response Time']):>8.0f} {float(row['Average Content Size']):>10.0f}")


def _has_route(stack, path: str) -> bool:
    response = httpx.get(f"{stack.url}/openapi.json", timeout=30)
    return response.status_code == 200 and path in response.json().get("paths", {})


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("progress, upload", [("poll", "multipart"), ("sse", "presigned")])
def test_locust_smoke_run(serve_stack, tmp_path, progress, upload):
    for needed, route in ((progress == "sse", "/v1/jobs/{job_id}/events"), (upload == "presigned", "/v1/uploads")):
        assert not needed or _has_route(serve_stack, route), f"the API has no {route}"
    prefix = tmp_path / "load"
    env = {**os.environ, **SMOKE_ENV, "SONIC_API_KEY": serve_stack.api_key, "SONIC_LOAD_PROGRESS": progress,
           "SONIC_LOAD_UPLOAD": upload}
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "3", "-r", "3",
           "-t", f"{RUN_TIME_S}s", "--stop-timeout", str(STOP_TIMEOUT_S), "--host", serve_stack.url,
           "--csv", str(prefix), "--only-summary", "--exit-code-on-error", "1"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=RUN_TIME_S + STOP_TIMEOUT_S + 90)
    rows = _stats(prefix)
    _print_table(rows)
    by_name = {(r["Type"], r["Name"]): r for r in rows}
    failures = [r for r in rows if int(r["Failure Count"])]
    assert not failures, f"failed requests: {failures}\n{run.stderr[-4000:]}"
    assert run.returncode == 0, run.stderr[-4000:]
    e2e = by_name[("JOB", "e2e")]
    assert int(e2e["Request Count"]) >= 1
    assert float(e2e["Average Content Size"]) > 1000                      # the MP4s were downloaded
    assert int(by_name[("POST", "/v1/jobs")]["Request Count"]) >= int(e2e["Request Count"])
    assert ("GET", "/v1/jobs/[id]/result") in by_name
    assert ("GET", "/v1/jobs/[id]" if progress == "poll" else "/v1/jobs/[id]/events") in by_name
    if upload == "presigned":
        assert int(by_name[("PUT", "S3 presigned upload")]["Request Count"]) >= 2 * int(e2e["Request Count"])
    assert not [r["Name"] for r in rows if re.search(r"/v1/jobs/(?!\[id\])\w", r["Name"])]   # ids are grouped
