"""``GET /v1/tenant``: who the key belongs to, its quotas and its webhook signing secret."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from deployments.auth import config_quota_defaults, effective_quotas
from deployments.storage import Keys
from deployments.webhooks import WebhookSecretMissing, tenant_webhook_secret

from .context import Services, Svc, Who, s3
from .problems import problem_responses
from .schemas import Tenant

router = APIRouter(tags=["tenant"])


def webhook_secret(services: Services, tenant: str) -> str | None:
    """The tenants file's secret for ``tenant``, else the one derived from ``SONIC_WEBHOOK_SECRET``."""
    entry = services.keys.entry(tenant)
    if entry is not None and entry.webhook_secret:
        return entry.webhook_secret
    try:
        return tenant_webhook_secret(tenant)
    except WebhookSecretMissing:   # no SONIC_WEBHOOK_SECRET: webhooks are not sent at all
        return None


@router.get("/v1/tenant", response_model=Tenant, summary="Your tenant: quotas and webhook secret",
            responses=problem_responses(401))
async def get_tenant(services: Svc, who: Who) -> dict[str, Any]:
    stored = await s3(services.storage.get_json, Keys.tenant(who.tenant))
    quotas = effective_quotas(config_quota_defaults(services.config), stored, services.keys.entry(who.tenant))
    return {"tenant": who.tenant, "quotas": quotas, "webhook_secret": webhook_secret(services, who.tenant)}
