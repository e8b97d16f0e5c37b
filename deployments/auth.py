"""Tenants and Bearer API keys. Keys are random (256 bits) and stored only as their SHA-256 in S3.

Key format: ``sk_<key id>_<secret>``; the key id (public, 8 hex digits) names the key in listings and logs.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from deployments.jobs import now
from deployments.storage import Keys, Storage

TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class Principal:
    tenant: str
    key_id: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    key_id = secrets.token_hex(4)
    return f"sk_{key_id}_{secrets.token_urlsafe(32)}", key_id


def ensure_tenant(storage: Storage, tenant: str, **fields) -> dict:
    if not TENANT_RE.match(tenant):
        raise ValueError(f"tenant name must match {TENANT_RE.pattern}: {tenant!r}")
    record = storage.get_json(Keys.tenant(tenant))
    if record is None:
        record = {"id": tenant, "created_at": now(), "quotas": {}, **fields}
        storage.put_json(Keys.tenant(tenant), record)
    return record


def create_api_key(storage: Storage, tenant: str, label: str = "") -> str:
    """A new key for ``tenant`` (created if needed). The plain key is returned once and never stored."""
    ensure_tenant(storage, tenant)
    key, key_id = new_api_key()
    storage.put_json(Keys.api_key(hash_key(key)),
                     {"tenant": tenant, "key_id": key_id, "label": label, "created_at": now(), "revoked": False})
    return key


def authenticate(storage: Storage, key: str) -> Principal | None:
    if not key or len(key) > 256:
        return None
    record = storage.get_json(Keys.api_key(hash_key(key)))
    if not record or record.get("revoked"):
        return None
    return Principal(record["tenant"], record.get("key_id", ""))
