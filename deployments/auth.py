"""Tenants and Bearer API keys. Keys are stored only as their SHA-256, from three sources:

* S3: ``apikeys/{sha256}.json`` records made by :func:`create_api_key` (key format ``sk_<key id>_<secret>``;
  the key id, 8 hex digits, names the key in listings and logs);
* a tenants file (``AppConfig.api_keys_file``, YAML or JSON), see :func:`load_tenants`;
* the environment: ``SONIC_API_KEYS`` (the Helm chart renders it from a Secret), see :func:`tenants_from_env`.

The file and the environment may also set a tenant's webhook secret and quotas.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployments.jobs import now
from deployments.storage import Keys, Storage

log = logging.getLogger(__name__)

TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
DEFAULT_TENANT = "default"
ENV_API_KEYS = "SONIC_API_KEYS"
QUOTA_NAMES = ("max_running", "max_queued", "submits_per_minute")
_HASH_RE = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_ENTRY_FIELDS = {"api_keys", "webhook_secret", "quotas"}


@dataclass(frozen=True)
class Principal:
    tenant: str
    key_id: str


@dataclass
class TenantEntry:
    """A tenant as configured in the tenants file or ``SONIC_API_KEYS``."""

    tenant: str
    key_hashes: set[str] = field(default_factory=set)   # SHA-256 hex of every accepted key
    webhook_secret: str | None = None
    quotas: dict[str, int] = field(default_factory=dict)  # subset of QUOTA_NAMES


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
    """The owner of ``key`` among the S3 key records (None: unknown or revoked)."""
    if not key or len(key) > 256:
        return None
    record = storage.get_json(Keys.api_key(hash_key(key)))
    if not record or record.get("revoked"):
        return None
    return Principal(record["tenant"], record.get("key_id", ""))


# -- configured tenants (file and environment) -------------------------------------------------------------


def _key_hash(value: Any, where: str) -> str:
    """A configured key, plain or ``sha256:<hex>``, as its SHA-256 hex."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: an API key must be a non-empty string")
    value = value.strip()
    matched = _HASH_RE.match(value)
    if matched:
        return matched.group(1).lower()
    if value.lower().startswith("sha256:"):
        raise ValueError(f"{where}: `sha256:` must be followed by 64 hex digits")
    if len(value) < 16:
        raise ValueError(f"{where}: API keys must be at least 16 characters")
    return hash_key(value)


def _check_tenant(name: Any, where: str) -> str:
    if not isinstance(name, str) or not TENANT_RE.match(name):
        raise ValueError(f"{where}: tenant name must match {TENANT_RE.pattern}, got {name!r}")
    return name


def _quotas(raw: Any, where: str) -> dict[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}.quotas must be a mapping of {', '.join(QUOTA_NAMES)}")
    unknown = sorted(set(raw) - set(QUOTA_NAMES))
    if unknown:
        raise ValueError(f"{where}.quotas: unknown {unknown} (known: {', '.join(QUOTA_NAMES)})")
    out = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}.quotas.{name} must be a non-negative integer, got {value!r}")
        out[name] = value
    return out


def parse_tenants(data: Any, source: str = "tenants") -> dict[str, TenantEntry]:
    """Tenants from the parsed file: ``{"tenants": {name: {api_keys, webhook_secret?, quotas?}}}`` (the
    ``tenants`` level may be left out)."""
    if isinstance(data, dict) and set(data) == {"tenants"}:
        data = data["tenants"]
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of tenant name -> {{api_keys, webhook_secret, quotas}}")
    out: dict[str, TenantEntry] = {}
    for name, raw in data.items():
        where = f"{source}: tenant {name!r}"
        _check_tenant(name, where)
        raw = raw or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be a mapping")
        unknown = sorted(set(raw) - _ENTRY_FIELDS)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown} (known: {', '.join(sorted(_ENTRY_FIELDS))})")
        keys = raw.get("api_keys") or []
        if isinstance(keys, str) or not isinstance(keys, list):
            raise ValueError(f"{where}.api_keys must be a list")
        secret = raw.get("webhook_secret")
        if secret is not None and (not isinstance(secret, str) or len(secret) < 16):
            raise ValueError(f"{where}.webhook_secret must be a string of at least 16 characters")
        out[name] = TenantEntry(name, {_key_hash(k, f"{where}.api_keys[{i}]") for i, k in enumerate(keys)},
                                secret, _quotas(raw.get("quotas"), where))
    return out


def load_tenants(path: str | Path) -> dict[str, TenantEntry]:
    """Read a tenants file (YAML, or JSON, which YAML also reads). Raises ``ValueError`` naming the problem
    (never a key)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML/JSON ({exc})") from None
    return parse_tenants(data, str(path))


def tenants_from_env(value: str | None) -> dict[str, TenantEntry]:
    """``SONIC_API_KEYS``: comma-separated ``tenant:key``, ``tenant:sha256:<hex>``, or a bare key (or
    ``sha256:<hex>``) for tenant ``default``."""
    out: dict[str, TenantEntry] = {}
    for index, item in enumerate((value or "").split(",")):
        item = item.strip()
        if not item:
            continue
        where = f"{ENV_API_KEYS} entry {index + 1}"
        tenant, sep, rest = item.partition(":")
        if not sep or _HASH_RE.match(item):
            tenant, rest = DEFAULT_TENANT, item
        _check_tenant(tenant, where)
        out.setdefault(tenant, TenantEntry(tenant)).key_hashes.add(_key_hash(rest, where))
    return out


def merge_tenants(*sources: dict[str, TenantEntry]) -> dict[str, TenantEntry]:
    """One view of several sources: keys are pooled; a later source's secret and quotas win."""
    out: dict[str, TenantEntry] = {}
    for source in sources:
        for name, entry in source.items():
            mine = out.setdefault(name, TenantEntry(name))
            mine.key_hashes |= entry.key_hashes
            mine.webhook_secret = entry.webhook_secret or mine.webhook_secret
            mine.quotas = {**mine.quotas, **entry.quotas}
    return out


def configured_tenants(path: str | Path | None = None, env: dict | None = None) -> dict[str, TenantEntry]:
    """The tenants of ``SONIC_API_KEYS`` and of the tenants file at ``path`` (if any) together."""
    env = os.environ if env is None else env
    return merge_tenants(tenants_from_env(env.get(ENV_API_KEYS)), load_tenants(path) if path else {})


def effective_quotas(defaults: dict[str, int], stored: dict | None = None,
                     entry: TenantEntry | None = None) -> dict[str, int]:
    """A tenant's quotas: ``defaults`` (from AppConfig), then its S3 tenant record's ``quotas``, then the
    tenants file / environment entry."""
    out = {name: int(defaults[name]) for name in QUOTA_NAMES if name in defaults}
    for name, value in ((stored or {}).get("quotas") or {}).items():
        if name in QUOTA_NAMES and isinstance(value, int) and not isinstance(value, bool):
            out[name] = value
    if entry is not None:
        out.update(entry.quotas)
    return out


def config_quota_defaults(config) -> dict[str, int]:
    """The per-tenant quota defaults of an ``AppConfig``."""
    return {"max_running": config.tenant_max_running, "max_queued": config.tenant_max_queued,
            "submits_per_minute": config.tenant_submits_per_minute}


class KeyRing:
    """Resolves keys: configured tenants first (file re-read when it changes), then S3 records, cached for
    ``cache_s`` (a revoked S3 key stops working within that time). Thread-safe; calls may block on S3."""

    def __init__(self, storage: Storage, path: str | Path | None = None, env: dict | None = None,
                 cache_s: float = 60.0, reload_s: float = 10.0):
        self.storage = storage
        self.path = Path(path) if path else None
        self.env = os.environ if env is None else env
        self.cache_s, self.reload_s = cache_s, reload_s
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._mtime: float | None = None
        self._checked = 0.0
        self.tenants: dict[str, TenantEntry] = {}
        self._by_hash: dict[str, str] = {}
        self._load()

    def _load(self) -> None:
        tenants = configured_tenants(self.path, self.env)
        by_hash: dict[str, str] = {}
        for name, entry in tenants.items():
            for digest in entry.key_hashes:
                if by_hash.setdefault(digest, name) != name:
                    raise ValueError(f"one API key is configured for two tenants: {by_hash[digest]} and {name}")
        self.tenants, self._by_hash = tenants, by_hash
        self._mtime = self.path.stat().st_mtime if self.path else None

    def refresh(self) -> None:
        """Re-read the tenants file if it changed (a mounted Secret is updated in place). A broken new
        version is ignored; the last good one stays."""
        if self.path is None or time.monotonic() - self._checked < self.reload_s:
            return
        self._checked = time.monotonic()
        try:
            if self.path.stat().st_mtime != self._mtime:
                with self._lock:
                    self._load()
                    self._cache.clear()
        except (OSError, ValueError) as exc:
            log.warning("tenants file %s not reloaded: %s", self.path, exc)

    def entry(self, tenant: str) -> TenantEntry | None:
        return self.tenants.get(tenant)

    def lookup(self, key: str) -> Principal | None:
        if not key or len(key) > 256:
            return None
        self.refresh()
        digest = hash_key(key)
        tenant = self._by_hash.get(digest)
        if tenant is not None:
            return Principal(tenant, "cfg-" + digest[:8])
        hit = self._cache.get(digest)
        if hit and time.monotonic() - hit[0] < self.cache_s:
            return hit[1]
        principal = authenticate(self.storage, key)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (time.monotonic(), principal)
        return principal

