"""Plan packages: a folder with plan.md (Definition of Done), phase files, role prompts.

Layout::

    package.toml            name, phase order, roles (names, or [roles.<name>] tables: see
                            core/roles.py), optional [prompts] role -> path, optional
                            parked = ["plan-phase<ID>-<slug>.md", ...]: plans outside the
                            sequence, brought into a run by `enqueue phase <ID>`
    plan.md                 mission; a "## 2" / "Definition of Done" section with D1..Dn
    plan-phase<ID>-<slug>.md  one per phase; its own items "<ID>.<n>"
    prompts/<role>.md       role prompts (paths may point outside the package)
    IDEAS.md brief.md kickoff.md   optional

``load_package`` returns the model plus a list of defects, each one line naming the
problem and the fix; callers treat any defect as fatal (exit 2).
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from pydantic import BaseModel, Field

from ccci_dist.config import name_problem
from ccci_dist.core.roles import RoleSpec, default_role, parse_roles, role_spec

DEFAULT_PHASES = ["1c", "1b", "1d", "1e", "2", "2b", "3", "4"]
DEFAULT_ROLES = ["builder", "reviewer"]
# Paths no commit may add (gitignore-style; a trailing / is a directory anywhere in the tree):
# the seed's hardened .gitignore. A package may set its own with forbidden_paths = [...].
DEFAULT_FORBIDDEN_PATHS = [".sops/", "*-secrets/", ".claude/", "*.tmp.*", "*.key", "*.pem", ".env"]
PHASE_ID_RE = re.compile(r"^[0-9A-Za-z]+$")
PHASE_FILE_RE = re.compile(r"^plan-phase(?P<id>[0-9A-Za-z]+)-(?P<slug>[^/]+)\.md$")
DOD_HEADING_RE = re.compile(r"^##\s+(?:2\b|.*definition of done)", re.IGNORECASE)
DOD_ITEM_RE = re.compile(r"^\s*(?:[-*+]\s+|\d+[.)]\s+)?(?:\*\*|__)?(D\d+)(?:\*\*|__)?\s*[:.)\-–—]\s*(.+)$")


class Item(BaseModel):
    """A checkable item: a DoD item (D3) or a phase item (1c.2)."""

    id: str
    text: str


class Phase(BaseModel):
    id: str
    file: Path
    title: str = ""
    items: list[Item] = Field(default_factory=list)


class PlanPackage(BaseModel):
    """A validated plan package."""

    root: Path
    name: str
    phases: list[Phase]
    roles: list[str]
    prompts: dict[str, Path]
    dod: list[Item]
    specs: list[RoleSpec] = Field(default_factory=list)
    parked: list[Phase] = Field(default_factory=list)  # outside the sequence until a run takes one in

    def spec(self, role: str) -> RoleSpec:
        """The role's spec (its default when the package names roles without tables)."""
        return role_spec(self.specs, role)
    forbidden_paths: list[str] = Field(default_factory=lambda: list(DEFAULT_FORBIDDEN_PATHS))

    @property
    def parked_ids(self) -> list[str]:
        return [p.id for p in self.parked]

    def with_parked(self, ids: list[str]) -> PlanPackage:
        """The package with the parked plans ``ids`` taken into the sequence (appended, in that order)."""
        taken = [p for i in dict.fromkeys(ids) for p in self.parked if p.id == i and i not in self.phase_order]
        return self.model_copy(update={"phases": [*self.phases, *taken],
                                       "parked": [p for p in self.parked if p not in taken]})

    def phase(self, phase_id: str) -> Phase:
        for p in self.phases:
            if p.id == phase_id:
                return p
        raise KeyError(phase_id)

    @property
    def phase_order(self) -> list[str]:
        return [p.id for p in self.phases]

    def read(self, path: Path) -> str:
        return path.read_text(encoding="utf-8")


class PackageError(Exception):
    """The package has defects; ``defects`` holds one line per defect."""

    def __init__(self, defects: list[str]):
        super().__init__("; ".join(defects))
        self.defects = defects


def parse_dod(text: str) -> list[Item]:
    """DoD items D1..Dn from the Definition of Done section of plan.md."""
    items: list[Item] = []
    in_section = False
    for line in text.splitlines():
        if line.startswith("## "):
            in_section = bool(DOD_HEADING_RE.match(line))
            continue
        if in_section and (m := DOD_ITEM_RE.match(line)):
            items.append(Item(id=m.group(1), text=m.group(2).strip()))
    return items


def parse_phase_items(phase_id: str, text: str) -> list[Item]:
    """Items ``<phase>.<n>`` listed in a phase file."""
    pat = re.compile(
        rf"^\s*(?:[-*+]\s+)?(?:\*\*|__)?({re.escape(phase_id)}\.\d+)(?:\*\*|__)?\s*[:.)\-–—]\s*(.+)$"
    )
    return [Item(id=m.group(1), text=m.group(2).strip()) for m in map(pat.match, text.splitlines()) if m]


def _title(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return ""


def _read_text(path: Path, defects: list[str], root: Path) -> str | None:
    rel = _rel(path, root)
    if not path.is_file():
        defects.append(f"missing file: {rel}; create it")
        return None
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        defects.append(f"not UTF-8: {rel}; re-save it as UTF-8")
        return None


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def load_package(root: str | Path) -> PlanPackage:
    """Load and validate a plan package; raise ``PackageError`` listing every defect."""
    root = Path(root).expanduser().resolve()
    defects: list[str] = []
    if not root.is_dir():
        raise PackageError([f"plan package {root} is not a folder; pass the package directory"])

    meta: dict = {}
    meta_file = root / "package.toml"
    if meta_file.exists():
        raw = _read_text(meta_file, defects, root)
        if raw is not None:
            try:
                meta = tomllib.loads(raw)
            except tomllib.TOMLDecodeError as exc:
                defects.append(f"package.toml is not valid TOML ({exc}); fix the syntax")
    name = str(meta.get("name") or root.name)
    raw_order = meta.get("phases", DEFAULT_PHASES)
    if not isinstance(raw_order, list):
        defects.append(f"phases in package.toml must be a list of phase ids, not {raw_order!r}; "
                       "e.g. phases = [\"1\", \"2\"]")
        raw_order = DEFAULT_PHASES
    order = [str(p) for p in raw_order]
    specs = parse_roles(meta.get("roles", DEFAULT_ROLES), defects)
    roles = [r.name for r in specs]
    prompt_paths = {r.name: r.prompt for r in specs if r.prompt}
    raw_prompts = meta.get("prompts", {})
    if not isinstance(raw_prompts, dict):
        defects.append(f"prompts in package.toml must be a table of role = path, not {raw_prompts!r}; "
                       "e.g. [prompts] builder = \"prompts/builder.md\"")
        raw_prompts = {}
    prompt_paths |= {str(k): str(v) for k, v in raw_prompts.items()}
    forbidden = meta.get("forbidden_paths", DEFAULT_FORBIDDEN_PATHS)
    if not isinstance(forbidden, list) or not all(isinstance(p, str) and p.strip() for p in forbidden):
        defects.append("forbidden_paths in package.toml must be a list of non-empty strings; "
                       "e.g. forbidden_paths = [\".sops/\", \"*.key\"]")
        forbidden = DEFAULT_FORBIDDEN_PATHS

    seen: set[str] = set()
    for pid in order:
        if not PHASE_ID_RE.match(pid):
            defects.append(f"bad phase id {pid!r} in package.toml; use letters and digits only")
        if pid in seen:
            defects.append(f"duplicate phase id {pid} in package.toml phases; list each phase once")
        seen.add(pid)
    if not order:
        defects.append("no phases in package.toml; list at least one phase id in phases = [...]")

    files_by_id: dict[str, list[Path]] = {}
    for f in sorted(root.glob("plan-phase*.md")):
        if m := PHASE_FILE_RE.match(f.name):
            files_by_id.setdefault(m.group("id"), []).append(f)
    phases: list[Phase] = []
    for pid in dict.fromkeys(order):
        files = files_by_id.get(pid, [])
        if not files:
            defects.append(f"phase {pid} is named in the order but plan-phase{pid}-<slug>.md is absent; add the file")
            continue
        if len(files) > 1:
            names = ", ".join(f.name for f in files)
            defects.append(f"duplicate phase id {pid}: {names}; keep one file per phase")
        text = _read_text(files[0], defects, root)
        if text is None:
            continue
        items = parse_phase_items(pid, text)
        if not text.strip():
            defects.append(f"empty phase file: {files[0].name}; write the phase plan")
        elif not items:
            # without items the reviewer has nothing to verify and DONE alone would complete the phase
            defects.append(f"no items in {files[0].name}; list them as '- **{pid}.1**: ...' under '## Items'")
        item_ids = [i.id for i in items]
        for dup in sorted({i for i in item_ids if item_ids.count(i) > 1}):
            defects.append(f"duplicate item {dup} in {files[0].name}; number each item once")
        phases.append(Phase(id=pid, file=files[0], title=_title(text), items=items))

    parked = _parked(meta.get("parked", []), root, set(order), defects)

    dod: list[Item] = []
    plan_text = _read_text(root / "plan.md", defects, root)
    if plan_text is not None:
        dod = parse_dod(plan_text)
        if not dod:
            defects.append(
                "no DoD items in plan.md; add a '## 2. Definition of Done' section with lines '- **D1**: ...'"
            )
        ids = [i.id for i in dod]
        for dup in sorted({i for i in ids if ids.count(i) > 1}):
            defects.append(f"duplicate DoD item {dup} in plan.md; number each item once")

    prompts: dict[str, Path] = {}
    if not roles:
        defects.append("no roles in package.toml; set roles = [\"builder\", \"reviewer\"]")
    for role in roles:
        if (problem := name_problem(role, "role name")) is not None:
            defects.append(f"{problem}; rename the role in package.toml")
            continue
        path = (root / prompt_paths.get(role, f"prompts/{role}.md")).resolve()
        text = _read_text(path, defects, root)
        if text is not None and not text.strip():
            defects.append(f"empty prompt for role {role}: {_rel(path, root)}; write the role prompt")
        prompts[role] = path
    for optional in ("IDEAS.md", "brief.md", "kickoff.md"):
        if (root / optional).exists():
            _read_text(root / optional, defects, root)

    if defects:
        raise PackageError(defects)
    return PlanPackage(root=root, name=name, phases=phases, roles=roles, prompts=prompts, dod=dod, specs=specs,
                       forbidden_paths=[str(p) for p in forbidden], parked=parked)


def _parked(raw: object, root: Path, order: set[str], defects: list[str]) -> list[Phase]:
    """The parked plans package.toml lists: phase files outside the sequence (``plan-phase<ID>-<slug>.md``)."""
    if not isinstance(raw, list) or not all(isinstance(f, str) for f in raw):
        defects.append("parked in package.toml must be a list of plan file names; "
                       "e.g. parked = [\"plan-phaseSSO-sso-dep-testing.md\"]")
        return []
    out: list[Phase] = []
    for name in raw:
        m = PHASE_FILE_RE.match(name)
        if m is None:
            defects.append(f"parked plan {name!r} is not named plan-phase<ID>-<slug>.md; rename it")
            continue
        pid = m.group("id")
        if pid in order or pid in {p.id for p in out}:
            defects.append(f"parked plan {name} has phase id {pid}, which is already a phase; give it its own id")
            continue
        text = _read_text(root / name, defects, root)
        if text is None:
            continue
        items = parse_phase_items(pid, text)
        if not items:
            defects.append(f"no items in parked plan {name}; list them as '- **{pid}.1**: ...' under '## Items'")
            continue
        out.append(Phase(id=pid, file=root / name, title=_title(text), items=items))
    return out


def snapshot(pkg: PlanPackage) -> dict:
    """The package as plain JSON data, stored with the run so workers on any host can use it."""
    return {
        "name": pkg.name,
        "order": pkg.phase_order,
        "roles": pkg.roles,
        "specs": [r.model_dump(mode="json") for r in pkg.specs],
        "phases": {
            p.id: {"title": p.title, "text": pkg.read(p.file), "items": [i.model_dump() for i in p.items]}
            for p in pkg.phases
        },
        "dod": [i.model_dump() for i in pkg.dod],
        "prompts": {role: pkg.read(path) for role, path in pkg.prompts.items()},
        "forbidden_paths": pkg.forbidden_paths,
        "parked": pkg.parked_ids,
    }


def specs_of(data: dict) -> list[RoleSpec]:
    """The role specs of a snapshot; snapshots from before role tables carry names only, and
    their roles get the defaults."""
    if "specs" in data:
        return [RoleSpec(**r) for r in data["specs"]]
    return [default_role(r) for r in data["roles"]]


def from_snapshot(data: dict) -> PlanPackage:
    """Rebuild a ``PlanPackage`` (for the pure phase/DONE logic) from a snapshot."""
    phases = [
        Phase(id=pid, file=Path(f"plan-phase{pid}.md"), title=data["phases"][pid]["title"],
              items=[Item(**i) for i in data["phases"][pid]["items"]])
        for pid in data["order"]
    ]
    specs = specs_of(data)
    return PlanPackage(root=Path("."), name=data["name"], phases=phases, roles=data["roles"],
                       prompts={r: Path(f"{r}.md") for r in data["roles"]},
                       dod=[Item(**i) for i in data["dod"]], specs=specs,
                       forbidden_paths=data.get("forbidden_paths", DEFAULT_FORBIDDEN_PATHS))


def forbidden_hits(files: list[str], patterns: list[str]) -> list[str]:
    """The files matching a forbidden pattern (gitignore-style: ``dir/`` matches a directory at any
    depth, ``*.key`` a name at any depth, a pattern with an inner ``/`` the path from the root)."""
    def hit(path: str) -> bool:
        parts = path.split("/")
        for pat in patterns:
            if pat.endswith("/"):
                if any(fnmatch.fnmatchcase(d, pat.rstrip("/")) for d in parts[:-1]):
                    return True
            elif "/" in pat.strip("/"):
                if fnmatch.fnmatchcase(path, pat.lstrip("/")):
                    return True
            elif fnmatch.fnmatchcase(parts[-1], pat.lstrip("/")):
                return True
        return False

    return [f for f in files if hit(f)]
