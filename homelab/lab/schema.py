"""The lab file's JSON Schema."""

from __future__ import annotations

from typing import Any

from homelab.lab.models import Lab


def lab_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of lab.yml, as editors read it."""
    schema = Lab.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "homelab lab file"
    return schema
