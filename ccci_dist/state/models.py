"""Typed views of the run and loop hashes and of a claim: Redis holds strings, callers get types.

Unknown fields are kept (``extra="allow"``) so a newer writer never loses data through an older
reader; empty strings (how a cleared field is stored) read as the field's default.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _blank_to_default(data: Any) -> Any:
    return {k: v for k, v in data.items() if v != ""} if isinstance(data, dict) else data


class _HashModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _clear_blanks(cls, data: Any) -> Any:
        return _blank_to_default(data)

    @classmethod
    def from_hash(cls, h: dict[str, str]):  # noqa: ANN206 - the subclass
        """The typed view of a Redis hash (``{}`` when the key does not exist)."""
        return cls.model_validate(h)

    @property
    def exists(self) -> bool:
        return bool(self.model_fields_set or self.model_extra)


def _json_list(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


class LoopState(_HashModel):
    """``ccci:loop:{run}:{role}``."""

    state: str = ""
    role: str = ""
    iteration: int = 0
    running: int | None = None  # the number of the iteration under way (claimed, not finished)
    attempt: int = 1
    host: str = ""
    owner: str = ""
    token: int | None = None
    started_at: float | None = None
    task_id: str = ""
    next_at: float | None = None
    ended_at: float | None = None
    next_queue: str = ""
    not_before: float | None = None
    stalled_until: float | None = None
    stalled_display: str = ""
    fail_streak: int = 0
    nudges: list[str] = Field(default_factory=list)  # a factory, not a deep copy of [] per read (the tick reads 1,000s)
    session_id: str = ""
    fresh_session: bool = False
    agent_profile: str = ""  # the agent profile of the last iteration (core/agents.py)
    thread_tokens: str = ""
    inbox_acked: str = ""
    inbox_carried: str = ""  # the newest INBOX message a prompt carried (acknowledged or not)
    last_outcome: str = ""
    last_detail: str = ""
    last_commit: str = ""
    last_commit_subject: str = ""
    last_commit_at: float | None = None
    next_reason: str = ""
    cost_total: float = 0.0
    restarts: int = 0
    violation: str = ""
    builder_seen: int = 0
    stop_reason: str = ""
    pause_reason: str = ""  # no_progress | repeated_error (the breaker), while state is paused
    paused_commit: str = ""  # the repo commit the loop last saw when it paused: a newer one wakes it
    idle_streak: int = 0
    error_key: str = ""
    error_streak: int = 0
    docs_seen: str = ""  # fingerprint of the machine docs at the loop's last iteration
    waiting: str = ""  # its work is done for now: what it waits for (no iteration until the docs change)
    waiting_docs: str = ""  # fingerprint of the machine docs when it started to wait

    @field_validator("nudges", mode="before")
    @classmethod
    def _nudges(cls, v: Any) -> Any:
        return _json_list(v)


class RunState(_HashModel):
    """``ccci:run:{run}``."""

    repo: str = ""
    branch: str = "main"
    status: str = ""
    phase: str = ""
    target_phase: str = ""  # the phase `enqueue phase` asked for, worked on until complete
    done_blocked_since: float | None = None  # every phase marked done, DONE not holding, since then
    done_blocked_woken: bool = False  # the done_blocked wake of this stretch was sent
    stuck_since: float | None = None  # held and breaker-paused loops wait for each other since (notified)
    plan: str = ""  # JSON snapshot of the plan package (parsed by core.plan.from_snapshot)
    plan_sha: str = ""  # SHA-1 of ``plan``, written with it by the Store (the tick fetches a plan only when new)
    plan_dir: str = ""
    roles: list[str] = Field(default_factory=list)
    queues: dict[str, str] = Field(default_factory=dict)
    docs: str = ""  # JSON MachineDocs mirrored from the repo
    paused_until: float | None = None
    pause_reason: str = ""
    started_at: float | None = None
    created_at: float | None = None
    done_at: float | None = None

    @field_validator("roles", "queues", mode="before")
    @classmethod
    def _json(cls, v: Any) -> Any:
        return _json_list(v)


class Claim(NamedTuple):
    """The answer of the claim script: ``ok`` with the token and numbers, or the ``reason`` it was refused."""

    ok: bool
    token: int = 0
    iteration: int = 0
    attempt: int = 0
    reason: str = ""

    @classmethod
    def from_reply(cls, reply: list) -> Claim:
        if int(reply[0]):
            return cls(True, int(reply[1]), int(reply[2]), int(reply[3]))
        return cls(False, reason=str(reply[1]))
