"""The refined JSON contract: a versioned pydantic schema every refinement must satisfy,
whether a model or the extractive refiner produced it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "refined-v1"  # bump on any change below: every document is refined again


class Entity(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=120)
    kind: Literal["product", "feature", "organization", "person", "place", "technology", "concept", "other"]


class RefinedDocument(BaseModel):
    """What a reader (or an application) wants to know about a document without reading it."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)
    summary: str = Field(min_length=20, max_length=1200, description="2-4 sentences, plain prose")
    key_points: list[str] = Field(min_length=1, max_length=8)
    topics: list[str] = Field(min_length=1, max_length=8, description="short lower-case topic labels")
    entities: list[Entity] = Field(max_length=15)
    questions_answered: list[str] = Field(min_length=1, max_length=6,
                                          description="questions a reader could answer from this document")
    content_type: Literal["guide", "reference", "faq", "policy", "runbook", "specification", "pricing", "other"]
    language: str = Field(min_length=2, max_length=8, description="ISO 639-1 code, e.g. en")


def response_json_schema() -> dict:
    """The schema as sent in `response_format` (strict structured outputs need every property
    required and no extra properties, which `extra="forbid"` and no defaults give)."""
    return RefinedDocument.model_json_schema()
