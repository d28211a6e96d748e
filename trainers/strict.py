"""The base of every settings model: unknown keys are errors, and settings never change once validated."""

from typing import Any

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def omit_empty(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    """A dump without the optional ``keys`` that are empty, so a config written before they
    existed keeps its hash (for a ``model_serializer(mode="wrap")``)."""
    for key in keys:
        if key in data and not data[key]:
            del data[key]
    return data
