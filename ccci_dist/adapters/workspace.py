"""A role's own clone of the project repo: sync before an iteration, check and push after.

Agents commit but never push: the clone's push URL is disabled, and the runner pushes
to the fetch URL after its fencing check, so a stale iteration cannot publish work.
Local work that is discarded at sync (from an interrupted or refused iteration) is kept
under ``refs/ccci/abandoned/`` rather than lost.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

from ccci_dist.core.phases import REVIEW_FILE, STATUS_FILE, MachineDocs, parse_docs

GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "ccci-dist",
    "GIT_AUTHOR_EMAIL": "ccci-dist@localhost",
    "GIT_COMMITTER_NAME": "ccci-dist",
    "GIT_COMMITTER_EMAIL": "ccci-dist@localhost",
}
NO_PUSH = "no_push://agents-commit-the-runner-pushes"
ABANDONED = "refs/ccci/abandoned/"  # work not pushed to the branch, kept rather than lost


def abandoned_ref(run: str, role: str, number: int, attempt: int) -> str:
    """Where an attempt whose lease was lost keeps its commits on the remote (run and role names are
    validated path-safe)."""
    return f"{ABANDONED}{run}/{role}/{number}-{attempt}"


class GitError(Exception):
    """A git command failed; the message is its one-line stderr summary."""


# The runner works in clones an agent user may own (agent_user); git would refuse them as
# "dubious ownership" without this.
SAFE = ("-c", "safe.directory=*")
# Resolved once: a PATH search costs every spawn a row of failed execs.
GIT_ARGV = (shutil.which("git") or "git", *SAFE)


# git config given to git subprocesses only (GIT_CONFIG_COUNT/KEY/VALUE), never to an agent and never
# written to a clone's .git/config: how git authenticates on this host.
_auth_env: dict[str, str] = {}


def configure_git_auth(project_repo: str, credential_file: Path | None = None) -> None:
    """Let this process's git calls authenticate: a git-credentials file as the credential helper, and
    for a ``project_repo`` with inline credentials (``--allow-inline-credentials``), a url rewrite from
    the stripped URL (the only form stored or shown) to the full one."""
    from ccci_dist.config import strip_credentials

    pairs: list[tuple[str, str]] = []
    if credential_file is not None:
        pairs.append(("credential.helper", f"store --file={credential_file}"))
    if project_repo and strip_credentials(project_repo) != project_repo:
        pairs.append((f"url.{project_repo}.insteadOf", strip_credentials(project_repo)))
    env = {"GIT_CONFIG_COUNT": str(len(pairs))} if pairs else {}
    for i, (key, value) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
    _auth_env.clear()
    _auth_env.update(env)


def _env() -> dict[str, str]:
    return {**os.environ, **{k: v for k, v in GIT_ENV.items() if k not in os.environ}, **_auth_env}


def git_env() -> dict[str, str]:
    """The environment this process's git calls run with (identity, no prompts, configured auth)."""
    return _env()


def git(cwd: Path, *args: str, check: bool = True, timeout: float = 300) -> str:
    p = subprocess.run([*GIT_ARGV, *args], cwd=cwd, capture_output=True, text=True, env=_env(), timeout=timeout)
    if check and p.returncode != 0:
        msg = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        raise GitError(f"git {args[0]} failed: {msg}")
    return p.stdout.strip()


class Workspace:
    """The clone at ``path`` tracking ``branch`` of ``repo``."""

    def __init__(self, path: Path, repo: str, branch: str = "main"):
        self.path, self.repo, self.branch = path, repo, branch

    def sync(self, label: str, probe: Probe | None = None) -> str:
        """Clone or fetch, then hard-reset to the remote branch; return the base commit.

        ``probe`` is this clone's quick check if one was started early (see ``Probe.start``).
        """
        if not (self.path / ".git").exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            git(self.path.parent, "clone", "-q", "-b", self.branch, self.repo, str(self.path))
        marker, set_up_for = self.path / ".git" / MARKER, f"{self.repo}\n{self.branch}"
        if not marker.exists() or marker.read_text() != set_up_for:
            git(self.path, "remote", "set-url", "origin", self.repo)
            git(self.path, "remote", "set-url", "--push", "origin", NO_PUSH)
            marker.write_text(set_up_for)
        if probe is None or (probe.repo, probe.branch) != (self.repo, self.branch):
            if probe is not None:
                probe.discard()
            probe = Probe(self.path, self.repo, self.branch)
        if (tip := probe.unchanged_tip()) is not None:
            return tip
        git(self.path, "fetch", "-q", "origin", self.branch)
        remote = f"origin/{self.branch}"
        ahead = git(self.path, "rev-list", "--count", f"{remote}..HEAD", check=False)
        if ahead and ahead != "0":
            self.keep(f"{ABANDONED}{label}-{int(time.time())}")
        # -f resets index and work tree to the remote tip, like reset --hard, in one process
        git(self.path, "checkout", "-q", "-f", "-B", self.branch, remote)
        git(self.path, "clean", "-q", "-fd")
        return self.head()

    def keep(self, ref: str, remote: bool = False) -> None:
        """Keep HEAD's commits under ``ref`` (``refs/ccci/abandoned/...``) in the clone; with ``remote``
        on the remote too, where the next attempt finds them from any host (outside every branch: no
        fence is needed, nothing an agent works on moves)."""
        git(self.path, "update-ref", ref, "HEAD")
        if remote:
            git(self.path, "push", "-q", "--force", self.repo, f"HEAD:{ref}", timeout=120)

    def remote_refs(self, pattern: str) -> list[str]:
        """The names of the remote's refs matching ``pattern`` (``git ls-remote`` patterns)."""
        out = git(self.path, "ls-remote", self.repo, pattern, timeout=120)
        return [line.split("\t", 1)[1] for line in out.splitlines() if "\t" in line]

    def exclude(self, patterns: list[str]) -> None:
        """Keep ``patterns`` out of ``git add`` in this clone (``.git/info/exclude``, rewritten only
        when it changed); the push check refuses what an agent forces in anyway."""
        path = self.path / ".git" / "info" / "exclude"
        text = "# ccci-dist: forbidden paths (never committed)\n" + "".join(f"{p}\n" for p in patterns)
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def hand_to(self, user: str, root: Path | None = None) -> None:
        """Give the clone to the agent's user (the runner's fetch and rebase leave root-owned files).

        With ``root`` (the workspace folder), the folders from ``root`` down to the clone get the
        search bit for others, so the agent can reach its clone: the worker made them with its
        umask (0027 under the systemd unit). They stay unlistable; only the clone is the agent's.
        """
        subprocess.run(["chown", "-R", f"{user}:", str(self.path)], check=True, capture_output=True, timeout=300)
        if root is None or root not in self.path.parents:
            return
        for folder in (self.path.parent, *[p for p in self.path.parent.parents if root in p.parents or p == root]):
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH:
                folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)

    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD")

    def subject(self, rev: str) -> str:
        """The subject line of commit ``rev`` ('' if git cannot say)."""
        return git(self.path, "log", "-1", "--format=%s", rev, check=False, timeout=30).strip()

    def changed_files(self, base: str) -> list[str]:
        """Files touched by commits since ``base`` (committed work only)."""
        out = git(self.path, "diff", "--name-only", f"{base}..HEAD")
        return [line for line in out.splitlines() if line]

    def outside(self, base: str, pathspecs: list[str]) -> list[str]:
        """Files changed by commits since ``base`` that ``pathspecs`` (git pathspecs, glob magic)
        do not cover: git itself does the matching. No pathspecs: every changed file."""
        changed = self.changed_files(base)
        if not changed or not pathspecs:
            return changed
        covered = set(git(self.path, "--glob-pathspecs", "diff", "--name-only", f"{base}..HEAD", "--",
                          *pathspecs).splitlines())
        return [f for f in changed if f not in covered]

    def added_lines(self, base: str, names: tuple[str, ...]) -> dict[str, list[str]]:
        """The lines commits since ``base`` added to each of the files ``names`` (top-level files)."""
        out: dict[str, list[str]] = {}
        current = None
        for line in git(self.path, "diff", "-U0", "--no-color", f"{base}..HEAD", "--", *names).splitlines():
            if line.startswith("+++ "):
                current = line[6:] if line.startswith("+++ b/") else None
            elif line.startswith("+") and current is not None:
                out.setdefault(current, []).append(line[1:])
        return out

    def files_in_commits(self, base: str) -> list[str]:
        """Every file any commit since ``base`` touched (also those a later commit removed again)."""
        out = git(self.path, "log", "--name-only", "--format=", f"{base}..HEAD")
        return sorted({line for line in out.splitlines() if line})

    def commits_since(self, base: str) -> int:
        if self._head_from_files() == base:  # the common case, an agent that committed nothing
            return 0
        return int(git(self.path, "rev-list", "--count", f"{base}..HEAD") or 0)

    def _head_from_files(self) -> str | None:
        """HEAD's commit read from the files, without a git process, when it is a loose ref or a
        detached HEAD (a loose ref overrides packed-refs, so a file found is the truth); None
        whenever git has to answer (packed refs, reftable, a worktree's ``.git`` file)."""
        git_dir = self.path / ".git"
        try:
            head = (git_dir / "HEAD").read_text().strip()
            if head.startswith("ref: refs/"):
                head = (git_dir / head[5:]).read_text().strip()
        except OSError:
            return None
        return head if len(head) in (40, 64) and all(c in "0123456789abcdef" for c in head) else None

    def push(self, before_push: callable, attempts: int = 4) -> str:
        """Rebase onto the remote and push; ``before_push()`` must return True each time.

        Returns the pushed commit. Raises ``PushRefused`` when the fence check fails.
        """
        for n in range(attempts):
            git(self.path, "fetch", "-q", "origin", self.branch)
            try:
                git(self.path, "rebase", "-q", f"origin/{self.branch}")
            except GitError:
                git(self.path, "rebase", "--abort", check=False)
                raise
            if not before_push():
                raise PushRefused("fencing token is no longer current")
            # The repository is the last fence: the push lands only if the branch still points where
            # this rebase saw it (compare-and-swap), whatever a Redis failover did to the token.
            seen = git(self.path, "rev-parse", f"refs/remotes/origin/{self.branch}").strip()
            p = subprocess.run([*GIT_ARGV, "push", "-q", f"--force-with-lease=refs/heads/{self.branch}:{seen}",
                                self.repo, f"HEAD:refs/heads/{self.branch}"],
                               cwd=self.path, capture_output=True, text=True, env=_env())
            if p.returncode == 0:
                git(self.path, "update-ref", f"refs/remotes/origin/{self.branch}", "HEAD")
                return self.head()
            if not any(w in p.stderr for w in ("non-fast-forward", "fetch first", "stale info")) and n == attempts - 1:
                raise GitError(f"git push failed: {p.stderr.strip().splitlines()[-1:]}")
            time.sleep(0.2 * (n + 1))
        raise GitError("git push kept losing the race with the other role; will retry next iteration")

    def docs(self, rev: str) -> MachineDocs:
        """Machine docs as committed at ``rev`` (never the work tree: an agent may leave edits
        it did not commit), read with one ``git cat-file --batch``."""
        names = (STATUS_FILE, REVIEW_FILE, "DEFERRED.md")
        p = subprocess.run([*GIT_ARGV, "cat-file", "--batch"], cwd=self.path, capture_output=True, timeout=60,
                           input="".join(f"{rev}:{n}\n" for n in names).encode(), check=True)
        out, texts = p.stdout, []
        for _ in names:
            header, _, out = out.partition(b"\n")
            if header.endswith(b" missing"):
                texts.append("")
                continue
            size = int(header.split()[2])
            texts.append(out[:size].decode("utf-8", "replace"))
            out = out[size + 1:]
        return parse_docs(*texts, commit=rev)


MARKER = "ccci-remote"  # in .git: "<repo>\n<branch>" the clone was last set up for


class Probe:
    """The quick check of a clone: is it already on the remote tip, clean, on the branch?

    Most iterations change nothing: one ``ls-remote`` and one ``status``, run side by side,
    then replace the fetch, checkout and clean of a full sync. Both only read, so an iteration
    starts them before it has claimed its loop (``Probe.start``) and reads them after.
    """

    def __init__(self, path: Path, repo: str, branch: str):
        self.repo, self.branch = repo, branch
        self.done = False

        def start(*args: str) -> subprocess.Popen:
            return subprocess.Popen([*GIT_ARGV, *args], cwd=path, env=_env(), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

        self.procs = (start("ls-remote", "origin", f"refs/heads/{branch}"),
                      # no index refresh: never hold index.lock where an agent may be committing
                      start("--no-optional-locks", "status", "--porcelain=v2", "--branch", "--untracked-files=all"))

    @classmethod
    def start(cls, path: Path) -> Probe | None:
        """Probe the clone at ``path`` for the remote and branch it was last set up for, if any."""
        try:
            repo, branch = (path / ".git" / MARKER).read_text().split("\n")
        except (OSError, ValueError):
            return None
        return cls(path, repo, branch)

    def unchanged_tip(self) -> str | None:
        """The remote tip when the clone already sits on it, clean, on the branch; else None.
        Any doubt (a failed command, an unexpected line) means None: the full sync runs and
        reports the error."""
        if self.done:
            return None
        try:
            (remote, _), (status, _) = (p.communicate(timeout=60) for p in self.procs)
        except subprocess.TimeoutExpired:
            self.discard()
            return None
        self.done = True
        if any(p.returncode for p in self.procs):
            return None
        tip = remote.split("\t", 1)[0].strip()
        expected = {f"# branch.oid {tip}", f"# branch.head {self.branch}", f"# branch.upstream origin/{self.branch}",
                    "# branch.ab +0 -0"}
        # v2 status: header lines start with '#', every other line is a change or an untracked file
        return tip if tip and set(status.splitlines()) == expected else None

    def discard(self) -> None:
        """End and reap both commands (a probe whose iteration did not run); idempotent."""
        if self.done:
            return
        self.done = True
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


class PushRefused(Exception):
    """The iteration is stale: its fencing token is no longer current."""


def read_remote_file(repo: str, branch: str, name: str, cache_dir, timeout: float = 60) -> str | None:
    """A file at the tip of the remote branch, through a small bare mirror; None if absent."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    if not (cache_dir / "HEAD").exists():
        subprocess.run(["git", "init", "-q", "--bare", str(cache_dir)], check=True, timeout=timeout)
    subprocess.run(["git", "fetch", "-q", "--depth=1", repo, f"+refs/heads/{branch}:refs/heads/{branch}"],
                   cwd=cache_dir, check=True, capture_output=True, timeout=timeout, env=_env())
    p = subprocess.run(["git", "show", f"{branch}:{name}"], cwd=cache_dir, capture_output=True, text=True)
    return p.stdout if p.returncode == 0 else None


def remote_branches(repo: str, timeout: float = 60) -> list[str]:
    """The branch names of ``repo`` (empty for a new repo without commits)."""
    out = subprocess.run([*GIT_ARGV, "ls-remote", "--heads", repo], capture_output=True, text=True, env=_env(),
                         timeout=timeout)
    if out.returncode != 0:
        raise GitError(f"git ls-remote failed: {out.stderr.strip().splitlines()[-1:]}")
    return [line.split("refs/heads/", 1)[1] for line in out.stdout.splitlines() if "refs/heads/" in line]


def first_commit(repo: str, branch: str, files: dict[str, str], workdir: Path) -> str:
    """Make the first commit of an empty ``repo`` on ``branch`` with ``files`` and push it."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    git(workdir, "init", "-q", "-b", branch)
    for name, text in files.items():
        (workdir / name).write_text(text)
    git(workdir, "add", "-A")
    git(workdir, "commit", "-q", "-m", "ccci-dist: first commit (machine docs and a hardened .gitignore)")
    git(workdir, "push", "-q", repo, f"HEAD:refs/heads/{branch}")
    return git(workdir, "rev-parse", "HEAD")
