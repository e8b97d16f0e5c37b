"""The LMS-facing HTTP API v1 (FastAPI), served by the Ingress deployment.

Modules: ``app`` (the application, :func:`openapi_spec`), ``context`` (services, auth dependency, bodies),
``problems`` (RFC 7807), ``schemas`` (pydantic models), ``jobs``, ``uploads``, ``batches``, ``events`` (SSE),
``preview``, ``tenants``, ``health``, ``idempotency``, ``submit`` (shared job acceptance), ``views``.
"""

from deployments.api.app import create_app, openapi_spec
from deployments.api.context import Services

__all__ = ["Services", "create_app", "openapi_spec"]
