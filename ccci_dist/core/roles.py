"""Roles as data: what each loop of a run is allowed and expected to do (pure).

A plan package declares its roles in ``package.toml``, one table each::

    [roles.builder]
    prompt = "prompts/builder.md"
    [roles.reviewer]
    prompt = "prompts/reviewer.md"
    waits_for = "builder"            # pacing: with reviewer_every = K, once per K builder iterations
    paths = ["REVIEW.md", "review/**"]
    verbs = ["VERIFIED", "FAILED"]
    [roles.supervisor]                # defaults: paths = [], on = every event, digest = true
    every = "2h"                      # and/or on = ["reboot", "phase_advanced", "stalled", "done_blocked"]
    agent = "claude-opus"             # an agent profile name

Every field has a default, and the defaults of ``builder`` and ``reviewer`` are today's
behaviour, so packages with only ``roles = ["builder", "reviewer"]`` (or nothing) still load.
Paths are git pathspecs with glob magic (``*`` stays within a folder, ``**`` crosses folders,
``:(exclude)`` / ``:!`` exclude); git itself evaluates them.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict

BUILDER, REVIEWER, SUPERVISOR = "builder", "reviewer", "supervisor"
EVENTS = ("reboot", "phase_advanced", "stalled", "done_blocked")
VERBS = ("DONE", "VERIFIED", "FAILED")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_SCALE = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class RoleSpec(BaseModel):
    """One role of a plan package."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    prompt: str = ""  # path in the package ("" = prompts/<name>.md)
    queue: str = ""  # Celery queue ("" = the configured queue for the role, else ccci.<name>)
    # Git pathspecs this role may change. None: its default (the reviewer: the configured
    # reviewer_paths; any other role: every path no other role owns). [] = none: it may not push.
    paths: tuple[str, ...] | None = None
    waits_for: str = ""  # pacing: runs once per reviewer_every iterations of that role
    verbs: tuple[str, ...] = ()  # machine-doc verbs it writes (DONE, VERIFIED, FAILED)
    every: float = 0.0  # cadence in seconds (0 = runs back to back, as builder and reviewer do)
    on: tuple[str, ...] = ()  # events that wake it (see EVENTS)
    agent: str = ""  # agent profile name ("" = the configured agent)
    digest: bool = False  # its prompt carries the run's status digest (phases, D-items, loops, costs, reboots)

    @property
    def woken(self) -> bool:
        """Runs on a cadence or when woken (an event or a nudge), not back to back."""
        return bool(self.every or self.on)

    def wakes_on(self, event: str) -> bool:
        return event in self.on


def default_role(name: str) -> RoleSpec:
    """A role as packages without a roles table have it (today's builder and reviewer)."""
    if name == BUILDER:
        return RoleSpec(name=name, verbs=("DONE",))
    if name == REVIEWER:
        return RoleSpec(name=name, waits_for=BUILDER, verbs=("VERIFIED", "FAILED"))
    if name == SUPERVISOR:  # optional third role: watches, messages the loops, notifies; pushes nothing
        return RoleSpec(name=name, paths=(), on=EVENTS, digest=True)
    return RoleSpec(name=name, waits_for=BUILDER)  # as before roles were data: held like a reviewer


def parse_duration(text: str | float | int) -> float:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"1d"`` (or a number of seconds) as seconds; ValueError if not."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    elif isinstance(text, str) and (m := _DURATION.match(text)):
        seconds = float(m.group(1)) * _SCALE[m.group(2)]
    else:
        raise ValueError(f"{text!r} is not a duration like \"90s\", \"15m\", \"2h\" or \"1d\"")
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


def parse_roles(table: Any, defects: list[str]) -> list[RoleSpec]:
    """Roles from package.toml's ``roles``: a list of names (defaults) or ``[roles.<name>]`` tables.
    Appends one line per defect (naming the problem and the fix) and skips that role."""
    if isinstance(table, list):
        return [default_role(str(n)) for n in table]
    if not isinstance(table, dict):
        defects.append("roles in package.toml must be a list of names or [roles.<name>] tables; fix its type")
        return []
    specs: list[RoleSpec] = []
    for name, raw in table.items():
        raw = raw if isinstance(raw, dict) else None
        if raw is None:
            defects.append(f"roles.{name} in package.toml must be a table ([roles.{name}]); fix its type")
            continue
        spec = _role(str(name), raw, defects)
        if spec is not None:
            specs.append(spec)
    names = {s.name for s in specs}
    for s in specs:
        if s.waits_for and s.waits_for not in names:
            defects.append(f"roles.{s.name}.waits_for names {s.waits_for!r}, which is not a role of the package; "
                           f"use one of {', '.join(sorted(names))}")
    return specs


def _role(name: str, raw: dict[str, Any], defects: list[str]) -> RoleSpec | None:
    base = default_role(name)
    fields: dict[str, Any] = base.model_dump()
    allowed = set(RoleSpec.model_fields) - {"name"}
    ok = True
    for key, value in raw.items():
        where = f"roles.{name}.{key}"
        if key not in allowed:
            defects.append(f"unknown key {where} in package.toml; use one of {', '.join(sorted(allowed))}")
            ok = False
        elif key == "digest":
            if not isinstance(value, bool):
                defects.append(f"{where} in package.toml must be true or false")
                ok = False
            else:
                fields[key] = value
        elif key in ("prompt", "queue", "waits_for", "agent"):
            if not isinstance(value, str):
                defects.append(f"{where} in package.toml must be a string; quote it")
                ok = False
            else:
                fields[key] = value
        elif key == "every":
            try:
                fields[key] = parse_duration(value)
            except ValueError as exc:
                defects.append(f"{where} in package.toml: {exc}")
                ok = False
        else:  # paths, verbs, on: lists of strings
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                defects.append(f"{where} in package.toml must be a list of strings, e.g. [\"a\", \"b\"]")
                ok = False
                continue
            bad = [v for v in value if key == "verbs" and v not in VERBS or key == "on" and v not in EVENTS]
            if bad:
                known = VERBS if key == "verbs" else EVENTS
                defects.append(f"{where} in package.toml: unknown {', '.join(map(repr, bad))}; "
                               f"use some of {', '.join(known)}")
                ok = False
            fields[key] = tuple(value)
    return RoleSpec(**fields) if ok else None


def role_spec(specs: list[RoleSpec], name: str) -> RoleSpec:
    """The spec of ``name`` among a run's roles (its default if the run predates role tables)."""
    return next((s for s in specs if s.name == name), None) or default_role(name)


def allowed_paths(role: RoleSpec, specs: list[RoleSpec], reviewer_paths: list[str]) -> list[str]:
    """The git pathspecs of what ``role`` may change, with the defaults resolved."""
    def own(s: RoleSpec) -> list[str] | None:
        if s.paths is not None:
            return list(s.paths)
        return list(reviewer_paths) if s.name == REVIEWER else None

    mine = own(role)
    if mine is not None:
        return mine
    others = [p for s in specs if s.name != role.name for p in (own(s) or []) if not p.startswith(":")]
    return ["**", *(f":(exclude){p}" for p in others)]


def verb_violations(role: RoleSpec, added: dict[str, list[str]]) -> list[str]:
    """The machine-doc lines ``role`` added (file -> added lines) with a verb it may not write, as
    ``"FILE: VERB (not a verb of <role>)"``; its ``verbs`` are all it may write."""
    from ccci_dist.core.phases import verbs_in

    return [f"{name}: {verb} (not a verb of {role.name})" for name, lines in added.items()
            for verb, _ in verbs_in(name, lines) if verb not in role.verbs]
