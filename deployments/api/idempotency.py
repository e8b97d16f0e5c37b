"""``Idempotency-Key`` on ``POST /v1/jobs`` and ``POST /v1/batches``.

The key (per tenant, stored as its SHA-256 under ``idempotency/``) remembers a fingerprint of the request
and the job or batch it made. The same key with the same request answers with that job or batch again; with
a different request, 409. A request is claimed before any work (a ``pending`` record); a claim that fails
with a 4xx/5xx is released so the client may retry with the same key. Within a replica the same key is
serialised by a lock; across replicas the claim is written, then read back, and only its owner proceeds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from typing import Any

from fastapi import Request

from deployments.jobs import now
from deployments.storage import Keys

from .context import Services, s3
from .problems import Problem, field_error, retry_after

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
WAIT_PENDING_S = 20.0   # how long a retry waits for the original request to finish
STALE_S = 300.0         # a pending claim older than this is abandoned (its replica died)

OPENAPI_PARAMETER = {"name": HEADER, "in": "header", "required": False,
                     "schema": {"type": "string", "maxLength": MAX_KEY_CHARS},
                     "description": "Makes the request safe to retry: the same key and body give the same result; "
                                    "the same key with another body is a 409"}

_locks: dict[tuple[str, str], list] = {}   # (tenant, key) -> [lock, users]


def header_key(request: Request) -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise Problem("bad_request", f"`{HEADER}` must be 1-{MAX_KEY_CHARS} printable characters",
                      [field_error(HEADER, "invalid", "use a UUID or another unique string per request")])
    return key


def fingerprint(kind: str, parts: list[Any]) -> str:
    """A stable hash of what a request asks for (JSON values canonicalised, bytes hashed)."""
    digest = hashlib.sha256(kind.encode())
    for part in parts:
        if isinstance(part, bytes):
            digest.update(b"B" + hashlib.sha256(part).digest())
        else:
            digest.update(b"J" + json.dumps(part, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


class Claim:
    """The outcome of :func:`claim`: either ``replay`` (the id made earlier) or a fresh claim to
    :meth:`complete` or :meth:`release`."""

    def __init__(self, services: Services, tenant: str, key: str | None, kind: str, print_: str):
        self.services, self.tenant, self.kind, self.print = services, tenant, kind, print_
        self.storage_key = Keys.idempotency(tenant, hashlib.sha256(key.encode()).hexdigest()) if key else None
        self.token = secrets.token_hex(8)
        self.replay: str | None = None

    async def _read(self) -> dict[str, Any] | None:
        return await s3(self.services.storage.get_json, self.storage_key)

    def _check(self, record: dict[str, Any]) -> None:
        if record.get("fingerprint") != self.print or record.get("kind") != self.kind:
            raise Problem("idempotency_conflict", f"this `{HEADER}` was used for a different request",
                          [field_error(HEADER, "already used with another body",
                                       "use a new key for a new request, or resend the original request")])

    async def acquire(self) -> None:
        if self.storage_key is None:
            return
        deadline = time.monotonic() + WAIT_PENDING_S
        while True:
            record = await self._read()
            if record is not None:
                self._check(record)
                if record.get("state") == "done":
                    self.replay = record["result_id"]
                    return
                if now() - float(record.get("created_at", 0)) > STALE_S:
                    record = None   # abandoned: take it over
            if record is None:
                await s3(self.services.storage.put_json, self.storage_key,
                         {"kind": self.kind, "fingerprint": self.print, "state": "pending", "token": self.token,
                          "created_at": now()})
                mine = await self._read()
                if mine is not None and mine.get("token") == self.token:
                    return
                continue
            if time.monotonic() > deadline:
                raise Problem("idempotency_in_progress", f"a request with this `{HEADER}` is still being processed",
                              [field_error(HEADER, "in progress", "retry in a moment")], headers=retry_after(2))
            await asyncio.sleep(0.25)

    async def complete(self, result_id: str) -> None:
        if self.storage_key is not None and self.replay is None:
            await s3(self.services.storage.put_json, self.storage_key,
                     {"kind": self.kind, "fingerprint": self.print, "state": "done", "token": self.token,
                      "result_id": result_id, "created_at": now()})

    async def release(self) -> None:
        if self.storage_key is not None and self.replay is None:
            record = await self._read()
            if record is not None and record.get("token") == self.token:
                await s3(self.services.storage.delete, self.storage_key)


class claim:
    """``async with claim(services, tenant, key, kind, fingerprint) as c:`` — ``c.replay`` is the earlier
    result's id (then do nothing); else do the work and call ``c.complete(id)``. An exception releases the
    claim."""

    def __init__(self, services: Services, tenant: str, key: str | None, kind: str, print_: str):
        self.claim = Claim(services, tenant, key, kind, print_)
        self.slot = (tenant, key) if key else None

    async def __aenter__(self) -> Claim:
        if self.slot is not None:
            entry = _locks.setdefault(self.slot, [asyncio.Lock(), 0])
            entry[1] += 1
            await entry[0].acquire()
        try:
            await self.claim.acquire()
        except BaseException:
            self._unlock()
            raise
        return self.claim

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                await self.claim.release()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self.slot is None:
            return
        entry = _locks[self.slot]
        entry[0].release()
        entry[1] -= 1
        if entry[1] == 0:
            del _locks[self.slot]
