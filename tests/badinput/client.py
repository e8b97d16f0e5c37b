"""A thin HTTP client over the running stack for the bad-input corpus: multipart built by hand (so a file name
may hold raw non-UTF-8 bytes), presigned uploads, raw requests whose headers lie, and problem checks."""

from __future__ import annotations

import http.client
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from deployments.jobs import TERMINAL
from deployments.storage import Keys, Storage

PROBLEM_BASE = "https://sonic-serve.dev/problems/"
CHEAP = {"steps": 1, "min_resolution": 64, "interpolate": False}   # what an accepted corpus job would cost


@dataclass
class Part:
    name: str
    value: bytes | str
    filename: bytes | str | None = None
    content_type: str | None = None


def multipart(parts: list[Part]) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data request. File names go out as given, raw bytes too."""
    boundary = "sonic" + secrets.token_hex(12)
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{part.name}"'.encode()
        if part.filename is not None:
            name = part.filename if isinstance(part.filename, bytes) else part.filename.encode()
            disposition += b'; filename="' + name + b'"'
        out += b"Content-Disposition: " + disposition + b"\r\n"
        if part.content_type:
            out += f"Content-Type: {part.content_type}\r\n".encode()
        out += b"\r\n" + (part.value if isinstance(part.value, bytes) else part.value.encode()) + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


@dataclass
class Api:
    """The stack's HTTP API as one tenant (its own key), plus that tenant's S3 view for setting up states that
    only time would otherwise make (an upload past its expiry)."""

    url: str
    key: str
    tenant: str
    storage: Storage
    good_image: bytes
    good_audio: bytes
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=120)

    def close(self) -> None:
        self.http.close()

    # -- jobs ----------------------------------------------------------------------------------------------

    def submit(self, *, image: bytes | None = None, audio: bytes | None = None, params: dict | None = None,
               image_name: bytes | str = "portrait.png", audio_name: bytes | str = "speech.wav",
               extra: list[Part] | None = None, omit: tuple[str, ...] = (), cheap: bool = True,
               headers: dict[str, str] | None = None) -> httpx.Response:
        """A multipart job: the good portrait and speech unless replaced; ``params`` as form fields."""
        parts = []
        if "image" not in omit:
            parts.append(Part("image", self.good_image if image is None else image, image_name,
                              "application/octet-stream"))
        if "audio" not in omit:
            parts.append(Part("audio", self.good_audio if audio is None else audio, audio_name,
                              "application/octet-stream"))
        values = {**(CHEAP if cheap else {}), **(params or {})}
        parts += [Part(name, form_value(value)) for name, value in values.items()]
        parts += extra or []
        body, kind = multipart(parts)
        return self.http.post("/v1/jobs", content=body, headers={"Content-Type": kind, **(headers or {})})

    def submit_json(self, body: Any, **kwargs) -> httpx.Response:
        return self.http.post("/v1/jobs", json=body, **kwargs)

    def cancel(self, job_id: str) -> httpx.Response:
        return self.http.delete(f"/v1/jobs/{job_id}")

    def wait(self, job_id: str, timeout_s: float = 600, poll_s: float = 1.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.http.get(f"/v1/jobs/{job_id}").json()
            if job["state"] in TERMINAL or time.monotonic() > deadline:
                return job
            time.sleep(poll_s)

    # -- uploads -------------------------------------------------------------------------------------------

    def upload(self, image: bytes | None = None, audio: bytes | None = None, put: bool = True) -> dict:
        """Presigned URLs for both files; with ``put`` the bytes (the good ones by default) are PUT there."""
        created = self.http.post("/v1/uploads", json={"image": {"filename": "me.png", "content_type": "image/png"},
                                                     "audio": {"filename": "talk.wav", "content_type": "audio/wav"}})
        assert created.status_code == 201, created.text
        upload = created.json()
        if put:
            for kind, data in (("image", image or self.good_image), ("audio", audio or self.good_audio)):
                target = upload[kind]
                httpx.put(target["url"], content=data, headers=target["headers"], timeout=60).raise_for_status()
        return upload

    def expire(self, upload: dict) -> None:
        """Move the upload's expiry into the past, as if its presigned lifetime had run out."""
        key = Keys.upload(self.tenant, upload["upload_id"], "upload.json")
        record = self.storage.get_json(key)
        record["expires_at"] = time.time() - 60
        self.storage.put_json(key, record)

    def keys_body(self, upload: dict, **params: Any) -> dict:
        return {"image_key": upload["image"]["key"], "audio_key": upload["audio"]["key"],
                "params": {**CHEAP, **params}}

    # -- raw -----------------------------------------------------------------------------------------------

    def raw(self, method: str, path: str, headers: dict[str, str | None], body: bytes = b"",
            send_body: bool = True) -> tuple[int, dict[str, str], bytes]:
        """A request with headers exactly as given (a Content-Length may promise more than is sent)."""
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in {"Authorization": f"Bearer {self.key}", **headers}.items():
                if value is not None:   # None: leave the header out
                    conn.putheader(name, value)
            conn.endheaders(body if send_body and body else None)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


@dataclass
class Answer:
    """What a corpus request got back, in one shape for httpx and raw responses."""

    status: int
    content_type: str
    body: Any
    headers: dict[str, str]

    @classmethod
    def of(cls, response: httpx.Response | tuple[int, dict[str, str], bytes]) -> Answer:
        if isinstance(response, httpx.Response):
            status, headers, raw = response.status_code, {k.lower(): v for k, v in response.headers.items()}, \
                response.content
        else:
            status, headers, raw = response
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        return cls(status, headers.get("content-type", ""), body, headers)


def problem_fields(body: Any) -> list[str]:
    return [e.get("field") for e in (body or {}).get("errors") or [] if isinstance(e, dict)]


def check_problem(answer: Answer, status: int, field: str | None, slug: str | None = None) -> dict:
    """A problem document with ``status`` whose errors name ``field`` with a message and a fix (or, for
    errors without a list, whose detail names it)."""
    assert answer.status == status, (answer.status, answer.body)
    assert answer.content_type.startswith("application/problem+json"), answer.content_type
    body = answer.body
    assert isinstance(body, dict) and body["status"] == status and body["title"] and body["detail"], body
    assert body["type"].startswith(PROBLEM_BASE), body
    if slug is not None:
        assert body["type"] == PROBLEM_BASE + slug, body
    if field is not None:
        named = [e for e in body.get("errors") or [] if e.get("field") == field]
        if named:
            assert all(e.get("message") and e.get("fix") for e in named), body
        else:
            assert field in body["detail"], f"no error names {field!r}: {body}"
    if status in (429, 503):
        assert int(answer.headers["retry-after"]) >= 1
    return body
