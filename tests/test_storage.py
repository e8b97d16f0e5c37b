"""S3 storage against a real embedded S3 server (SeaweedFS or MinIO)."""

from __future__ import annotations

import time

import pytest
from minio.error import S3Error

from deployments.auth import authenticate, create_api_key, hash_key
from deployments.jobs import JobParams, create_job
from deployments.storage import Keys, S3Settings, parse_endpoint, parse_s3_uri, with_retries

pytestmark = pytest.mark.s3


def test_settings_from_env_and_uris():
    env = {"SONIC_S3_ENDPOINT": "https://s3.example.com", "SONIC_S3_ACCESS_KEY": "a", "SONIC_S3_SECRET_KEY": "b"}
    settings = S3Settings.from_env(env=env)
    assert (settings.endpoint, settings.secure, settings.access_key) == ("s3.example.com", True, "a")
    assert S3Settings.from_env(env={**env, "SONIC_S3_SECURE": "0"}).secure is False
    assert parse_endpoint("127.0.0.1:9000") == ("127.0.0.1:9000", False)
    assert parse_s3_uri("s3://models/sonic/v1/") == ("models", "sonic/v1")
    with pytest.raises(ValueError):
        parse_s3_uri("/local/path")


def test_round_trips_listing_and_missing_keys(s3_storage, tmp_path):
    s3_storage.put_bytes("a/x.bin", b"\x00" * 10)
    s3_storage.put_json("a/y.json", {"k": [1, 2]})
    assert s3_storage.get_bytes("a/x.bin") == b"\x00" * 10
    assert s3_storage.get_json("a/y.json") == {"k": [1, 2]}
    assert s3_storage.get_json("a/missing.json") is None
    assert s3_storage.stat("a/missing") is None
    assert [o.key for o in s3_storage.list("a/")] == ["a/x.bin", "a/y.json"]
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * 4096)
    info = s3_storage.put_file("b/big.bin", source)
    assert info.size == source.stat().st_size and s3_storage.stat("b/big.bin").etag == info.etag
    back = s3_storage.get_file("b/big.bin", tmp_path / "back" / "big.bin")
    assert back.read_bytes() == source.read_bytes()
    assert b"".join(s3_storage.stream("b/big.bin", 1 << 16)) == source.read_bytes()
    s3_storage.delete("a/x.bin")
    assert not s3_storage.exists("a/x.bin")


def test_retries_transient_errors_only():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("reset")
        return "ok"

    assert with_retries(flaky, "test", base_delay=0.001) == "ok" and calls["n"] == 3

    def missing():
        calls["n"] += 1
        raise S3Error("NoSuchKey", "gone", "k", "r", "h", None)

    calls["n"] = 0
    with pytest.raises(S3Error):
        with_retries(missing, "test", base_delay=0.001)
    assert calls["n"] == 1


def test_retries_stop_at_the_deadline_and_report_every_failure():
    from deployments import storage

    seen: list[str] = []
    storage.S3_ERROR_LISTENERS.append(lambda op, exc: seen.append(op))
    calls = {"n": 0}

    def down():
        calls["n"] += 1
        raise ConnectionError("refused")

    try:
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            with_retries(down, "put some/key", base_delay=0.01, max_delay=0.05, deadline_s=0.5)
        assert 0.4 <= time.monotonic() - started < 2.0
        assert calls["n"] > 3 and seen == ["put"] * calls["n"]
    finally:
        storage.S3_ERROR_LISTENERS.clear()


def test_jobs_and_api_keys_layout(s3_storage):
    record = create_job(s3_storage, "acme", JobParams(steps=2), b"img", b"snd", "face.PNG", "talk.wav")
    assert record["inputs"] == {"image": f"inputs/acme/{record['id']}/image.png",
                                "audio": f"inputs/acme/{record['id']}/audio.wav"}
    assert s3_storage.get_json(Keys.job("acme", record["id"]))["state"] == "queued"
    key = create_api_key(s3_storage, "acme")
    assert authenticate(s3_storage, key).tenant == "acme"
    assert authenticate(s3_storage, key + "x") is None
    stored = s3_storage.get_json(Keys.api_key(hash_key(key)))
    assert key not in str(stored) and stored["tenant"] == "acme"
    assert s3_storage.get_json(Keys.tenant("acme"))["id"] == "acme"
