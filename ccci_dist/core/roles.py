"""Roles as data: what each loop of a run is allowed and expected to do (pure)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

BUILDER, REVIEWER = "builder", "reviewer"


class RoleSpec(BaseModel):
    """One role of a plan package."""

    model_config = ConfigDict(frozen=True)

    name: str
    # Pacing: with ``reviewer_every = K`` this role runs once per K iterations of that role.
    waits_for: str = ""


def default_role(name: str) -> RoleSpec:
    """A role as packages without a roles table have it: every role but the builder waits for it."""
    return RoleSpec(name=name, waits_for="" if name == BUILDER else BUILDER)
