"""Print the OpenAPI document: ``python -m deployments.api.openapi > docs/openapi.json``."""

from __future__ import annotations

import json

from deployments.api.app import openapi_spec


def render() -> str:
    return json.dumps(openapi_spec(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
