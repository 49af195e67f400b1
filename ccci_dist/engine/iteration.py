"""One iteration of a loop: a Celery task that claims the loop, runs the agent once, pushes
(fenced), records the result and enqueues its successor.

A multi-day loop is a chain of these, never one long task: a redelivered or duplicate
message finds the loop already claimed or its task id superseded and exits without running,
and a dead worker's loop is restarted by the watchdog once the lease lapses.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import subprocess
import sysconfig
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ccci_dist.adapters.agent import AgentProcess, IterationResult, agent_kind, build_command, profile_env
from ccci_dist.adapters.broker import client
from ccci_dist.adapters.workspace import ABANDONED, GitError, Probe, PushRefused, Workspace, abandoned_ref
from ccci_dist.config import Settings, hostname
from ccci_dist.core import agents
from ccci_dist.core.cockpit import usd
from ccci_dist.core.limits import backoff_seconds, clock
from ccci_dist.core.outcome import Outcome, classify
from ccci_dist.core.phases import REVIEW_FILE, STATUS_FILE, MachineDocs, blockers, docs_fingerprint, working_phase
from ccci_dist.core.plan import DEFAULT_FORBIDDEN_PATHS, forbidden_hits, from_snapshot, specs_of
from ccci_dist.core.policy import Decision, LoopFacts, Ran, decide
from ccci_dist.core.prompt import assemble, salvage_note
from ccci_dist.core.roles import RoleSpec, allowed_paths, role_spec, verb_violations
from ccci_dist.core.schedule import next_midnight
from ccci_dist.core.tick import waits_for_verdicts
from ccci_dist.engine.app import app, settings
from ccci_dist.engine.notify import notify, url_secret_parts
from ccci_dist.engine.supervisor import OUTBOX_ENV, apply_outbox, digest, wake
from ccci_dist.logsetup import log_context, prune_logs
from ccci_dist.state.inbox_store import stream_order as _sid
from ccci_dist.state.lease import Heartbeat
from ccci_dist.state.models import LoopState, RunState
from ccci_dist.state.outage import OutageLog, Unreachable, patiently
from ccci_dist.state.store import NOT_REPLICATED, PAUSED, STOPPED, Claimed, Store

log = logging.getLogger(__name__)
OUTAGE = OutageLog(log, "iteration runner")

# Agent env vars that would hand an agent the keys to the broker or the notifiers.
SECRET_ENV = ("CCCI_BROKER_URL", "CCCI_BROKER_PASSWORD_FILE", "CCCI_NOTIFY_URLS")

_stores: dict[str, Store] = {}


def get_store(s: Settings | None = None, purpose: str = "main") -> Store:
    """A process-wide Store on the broker's Redis; ``heartbeat`` gets timeouts of TTL/4, so a
    dead link is noticed before the lease would lapse."""
    s = s or settings()
    if purpose not in _stores:
        timeout = max(0.25, s.lease_ttl / 4) if purpose == "heartbeat" else 10.0
        _stores[purpose] = Store(client(s, timeout=timeout), s.replica_acks, s.replica_ack_timeout)
    return _stores[purpose]


def iteration_queue(s: Settings, run_hash: RunState, role: str) -> str:
    """The queue of the role's iterations: the run's own choice, else the configured default."""
    return run_hash.queues.get(role) or s.queue_for(role)


def send_iteration(run: str, role: str, task_id: str, queue: str) -> None:
    """Publish the iteration message (JSON: run and role only, never a secret)."""
    run_iteration.apply_async(args=[run, role], task_id=task_id, queue=queue)


def _secret_values(s: Settings) -> list[str]:
    """Every secret value this worker knows: no env var carrying one reaches an agent, whatever its name."""
    from urllib.parse import urlsplit

    from ccci_dist.logsetup import registered_secrets

    found = set(registered_secrets())
    for url in (u.get_secret_value() for u in s.notify_urls):  # tokens sit in several places of these
        found.update(url_secret_parts(url))
    if s.broker_url is not None:
        url = s.broker_url.get_secret_value()
        found.add(url)
        try:
            found.add(urlsplit(url).password or "")
        except ValueError:
            pass
    for path in (s.broker_password_file, s.vm.sudo_password_file):
        try:
            found.add(path.read_text().strip() if path else "")
        except OSError:
            pass
    return [v for v in found if len(v) >= 4]


# The config sections an agent needs (``ccci-dist vm ...``); nothing else of the worker's config is
# written for it: never the broker URL, its password or the notifier URLs.
AGENT_SECTIONS = ("vm",)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def agent_config(s: Settings, run: str) -> Path:
    """Write the run's agent-safe config (only AGENT_SECTIONS, paths absolute) and return its path:
    agents get it as CCCI_CONFIG, whatever config the worker found (./ccci-dist.toml or --config)."""
    lines = ["# written by the ccci-dist worker for its agents: only what they need, no broker or notifier"]
    for name in AGENT_SECTIONS:
        section = getattr(s, name).model_dump(mode="python")
        lines.append(f"\n[{name}]")
        for key, value in section.items():
            if value is None or hasattr(value, "get_secret_value"):
                continue
            value = value.expanduser().resolve() if isinstance(value, Path) else value
            lines.append(f"{key} = {_toml_value(value)}")
    folder = s.state_dir / "agent-config" / run
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ccci-dist.toml"
    tmp = folder / f".ccci-dist.toml.{os.getpid()}.{uuid.uuid4().hex[:6]}"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.chmod(tmp, 0o644)  # the agent user reads it (it holds no secret)
    os.replace(tmp, path)
    for d in (folder, folder.parent):
        os.chmod(d, 0o755)
    return path


def agent_env(s: Settings, run: str, role: str) -> dict[str, str]:
    """The agent's environment: the worker's, minus broker/notifier secrets; with ``agent_user``,
    that user's HOME (setpriv keeps root's, where the CLI finds neither its login nor its sessions).
    PATH starts with the runner's own bin (``ccci-dist`` for agents) and CCCI_CONFIG names the
    run's agent-safe config (see ``agent_config``)."""
    secrets = _secret_values(s)
    env = {k: v for k, v in os.environ.items()
           if k.upper() not in SECRET_ENV and not any(x in v for x in secrets)}
    env.update({"CCCI_RUN": run, "CCCI_ROLE": role, "CCCI_HOSTNAME": hostname()})
    scripts = sysconfig.get_path("scripts")
    path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != scripts]
    env["PATH"] = os.pathsep.join([scripts, *path])
    env["CCCI_CONFIG"] = str(agent_config(s, run))
    if s.agent_user:
        env.update({"USER": s.agent_user, "LOGNAME": s.agent_user})
        if env.get("HOME") in (None, pwd.getpwuid(os.getuid()).pw_dir):  # not chosen by the operator
            env["HOME"] = pwd.getpwnam(s.agent_user).pw_dir
    return env


class IterationFailed(Exception):
    """An iteration's outcome was a failure (already recorded); raised so the task shows as failed."""


@app.task(bind=True, name="ccci.iteration", acks_late=True, ignore_result=True, throws=(IterationFailed,))
def run_iteration(self, run: str, role: str) -> str:
    """Claim the loop (run, role) and run one iteration; returns a short outcome word."""
    s = settings()
    store = get_store(s)
    task_id = self.request.id or str(uuid.uuid4())
    owner = f"{hostname()}/{os.getpid()}/{task_id}"
    # The workspace's quick check only reads: it runs while the claim is under way.
    probe = Probe.start(s.workspace_dir / run / role)
    try:
        claimed = store.claim_and_read(run, role, task_id, owner, s.lease_ttl, hostname())
        claim = claimed.claim
        if claim.reason == NOT_REPLICATED:  # given back: the same task claims the same iteration again
            log.warning("claim of %s/%s not on a replica within %.1fs; retrying", run, role, s.replica_ack_timeout)
            raise self.retry(countdown=1, max_retries=None)
        if not claim.ok:
            log.info("iteration %s for %s/%s not run: %s", task_id, run, role, claim.reason)
            return f"skipped:{claim.reason}"
        with log_context(run=run, role=role, iteration=claim.iteration):
            it = Iteration(s, store, run, role, claim.token, owner, claim.iteration, claim.attempt, task_id)
            result = it.execute(claimed, probe)
        if it.failed:  # recorded and rescheduled already; the task fails so Flower says so (never retried)
            raise IterationFailed(f"{run}/{role} iteration {claim.iteration}: {result}")
        return result
    finally:
        if probe is not None:
            probe.discard()


class Iteration:
    """The body of one claimed iteration."""

    def __init__(self, s: Settings, store: Store, run: str, role: str, token: int, owner: str,
                 number: int, attempt: int, task_id: str):
        self.s, self.store, self.run, self.role = s, store, run, role
        self.token, self.owner, self.number, self.attempt, self.task_id = token, owner, number, attempt, task_id
        self.agent: AgentProcess | None = None
        self.started = datetime.now(UTC)
        self.lost: str | None = None
        self.log_path = ""
        self.heartbeat: Heartbeat | None = None
        self.run_hash = RunState()
        self.nudges_seen: list[str] = []
        self.sync_ms = 0.0
        self.loop = LoopState()
        self.resumed = ""  # the session this iteration's agent resumed, if any
        self.specs: list[RoleSpec] = []
        self.spec = role_spec([], role)
        self.profile = ""  # the agent profile this iteration runs (core/agents.py), once picked
        self.kind = agent_kind(s.agent_command)
        self.windows: dict[str, agents.ProfileWindow] = {}
        self.rate_events: list[dict[str, Any]] = []
        self.failed = False  # its outcome is a failure (Flower shows the task as failed)
        self.base_docs: MachineDocs | None = None  # the machine docs at the synced base

    # The heartbeat calls this from its thread the moment the lease is lost or stop is set.
    def _on_lost(self, why: str) -> None:
        self.lost = why
        if self.agent is not None:
            self.agent.kill(why)

    def _patient(self, call):
        """``call()`` (a Store call) through a Redis blip: retried while this iteration's lease may still be
        valid (the heartbeat moves its expiry on each renewal); ``Unreachable`` after that."""
        hb = self.heartbeat
        return patiently(call, lambda: hb.expires if hb is not None and not hb.lost else 0.0, OUTAGE)

    def _fence_ok(self) -> bool:
        """The fence check before a push, through a Redis blip; False once the lease may have lapsed."""
        try:
            return self._patient(lambda: self.store.fence_ok(self.run, self.role, self.token, self.owner))
        except Unreachable:
            return False

    def _abandon(self, ws: Workspace, why: str) -> str:
        """Keep the agent's unpushed commits on the remote, where the next attempt is told to salvage them."""
        ref = abandoned_ref(self.run, self.role, self.number, self.attempt)
        try:
            ws.keep(ref, remote=True)
        except (GitError, OSError, subprocess.SubprocessError) as exc:  # the clone's own ref still has them
            log.warning("iteration %s: %s; its commits are kept in the clone only (%s)", self.number, why, exc)
            return ref
        log.warning("iteration %s: %s; its commits are kept on the remote under %s", self.number, why, ref)
        return ref

    def _salvage(self, ws: Workspace) -> str:
        """The salvage note when an earlier attempt of this iteration kept commits on the remote."""
        if self.attempt == 1 and self.loop.last_outcome != "lease_lost":  # the common case: nothing to ask
            return ""
        try:
            refs = ws.remote_refs(f"{ABANDONED}{self.run}/{self.role}/{self.number}-*")
        except (GitError, OSError, subprocess.SubprocessError):
            return ""
        return salvage_note(refs) if refs else ""

    def execute(self, claimed: Claimed, probe: Probe | None = None) -> str:
        """Run the claimed iteration, from the state read right after the claim (and the
        workspace's quick check, if one was started)."""
        self.run_hash, self.loop = claimed.run, claimed.loop
        hb = Heartbeat(get_store(self.s, "heartbeat"), self.run, self.role, self.owner, self.s.lease_ttl,
                       self._on_lost)
        self.heartbeat = hb
        hb.start()
        try:
            return self._execute(claimed.inbox, probe)
        except Unreachable:  # nothing can be recorded: the lease lapses and the watchdog re-runs this number
            log.warning("iteration %s of %s/%s: Redis stayed unreachable until its lease ran out; left to the "
                        "watchdog", self.number, self.run, self.role)
            self.failed = True
            return "unreachable"
        except Exception as exc:  # record, back off, never spin; the lease tells the watchdog
            log.exception("iteration crashed in the runner")
            detail = f"runner: {exc.__class__.__name__}: {exc}"[:300]
            try:
                self._finish(IterationResult(), Outcome(kind="crash", action="backoff", detail=detail),
                             base="", pushed="", violations=[], inbox_last="")
            except Unreachable:
                log.warning("the crash was not recorded: Redis stayed unreachable until the lease ran out")
            except Exception as again:  # the bug is in the finishing itself: record it plainly
                log.exception("recording the crash failed; recording it without the finishing rules")
                self._record_crash(f"{detail}; finishing: {again.__class__.__name__}: {again}"[:300])
            self.failed = True
            return "crash"
        finally:
            hb.close()
            self._archive_log()

    def _record_crash(self, detail: str) -> None:
        """The smallest fenced finish: a history row naming the error, and a back-off like any crash."""
        now = datetime.now(UTC)
        streak = self.loop.fail_streak + 1
        wait = backoff_seconds(streak, base=self.s.backoff_base, cap=self.s.backoff_max)
        fields = {"iteration": self.number, "last_outcome": "crash", "last_detail": detail, "fail_streak": streak,
                  "ended_at": f"{now.timestamp():.3f}", "stalled_until": "",
                  "not_before": f"{now.timestamp() + wait:.3f}", "next_reason": f"back-off after {streak} failure(s)"}
        history = {"role": self.role, "iteration": self.number, "attempt": self.attempt,
                   "host": self.owner.split("/")[0], "start": f"{self.started.timestamp():.6f}",
                   "end": f"{now.timestamp():.6f}", "outcome": "crash", "detail": detail, "token": self.token}
        self.store.finish(self.run, self.role, self.token, self.owner, {k: str(v) for k, v in fields.items()},
                          {k: str(v) for k, v in history.items()})

    def _outbox(self) -> Path:
        """An empty folder for this iteration's requests (``ccci-dist inbox send`` / ``notify``)."""
        path = self.s.state_dir / "outbox" / self.run / self.role / f"{self.number:06d}-{self.attempt}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        if self.s.agent_user:
            pw = pwd.getpwnam(self.s.agent_user)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        return path

    def _after(self, d: Decision, outcome: Outcome) -> None:
        """After the fenced finish: carry out the agent's outbox, wake roles that watch for a stall."""
        path = self.s.state_dir / "outbox" / self.run / self.role / f"{self.number:06d}-{self.attempt}"
        try:
            apply_outbox(self.store, self.run, self.role, path, [r.name for r in self.specs])
        except Exception:  # the iteration is recorded; its requests are lost, not the loop
            log.exception("could not carry out the iteration's outbox")
        finally:
            shutil.rmtree(path, ignore_errors=True)
        if d.stalled_until is not None or d.stop_reason or d.pause_reason:
            why = (f"until {d.stalled_display}" if d.stalled_until is not None
                   else f"stopped: {d.stop_reason}" if d.stop_reason else f"paused: {d.pause_reason}")
            wake(self.store, self.run, self.specs, "stalled",
                 f"the {self.role} loop stalled ({outcome.kind}, {why}): {outcome.detail[:200]}", exclude=self.role)

    def _archive_log(self) -> None:
        """Keep this iteration's agent log in Redis (compressed, capped), readable from any host."""
        if not self.log_path or not os.path.exists(self.log_path):
            return
        try:
            with open(self.log_path, "rb") as fh:  # only the tail the archive keeps: never the whole file
                size = os.fstat(fh.fileno()).st_size
                fh.seek(max(0, size - self.store.ITERATION_LOG_MAX - 1))
                self.store.save_iteration_log(self.run, self.role, self.number, fh.read())
        except Exception as exc:  # the file on this host still has it
            log.warning("iteration log not archived: %s", exc.__class__.__name__)

    def _execute(self, inbox: list[tuple[str, str]], probe: Probe | None) -> str:
        hb = self.heartbeat
        assert hb is not None
        run_hash, loop = self.run_hash, self.loop
        plan = json.loads(run_hash.plan)
        self.specs = specs_of(plan)
        self.spec = role_spec(self.specs, self.role)
        ws = Workspace(self.s.workspace_dir / self.run / self.role, run_hash.repo, run_hash.branch)
        t0 = time.perf_counter()
        base = ws.sync(f"{self.role}-{self.number}", probe)
        self.sync_ms = (time.perf_counter() - t0) * 1000
        forbidden = plan.get("forbidden_paths", DEFAULT_FORBIDDEN_PATHS)
        ws.exclude(forbidden)
        if self.s.agent_user:
            ws.hand_to(self.s.agent_user, self.s.workspace_dir)
        nudges = self.nudges_seen = list(loop.nudges)
        phase, blocking = self._progress(ws, base, plan)
        # Messages an earlier prompt carried but no iteration acknowledged (it crashed or was cut off).
        carried = loop.inbox_carried
        repeats = {mid for mid, _ in inbox if carried and _sid(mid) <= _sid(carried)}
        if inbox:
            self.store.note_inbox_carried(self.run, self.role, inbox[-1][0])
        handoff = self._pick_profile(phase, len(inbox), bool(blocking))
        salvage = self._salvage(ws)
        prompt = assemble(role=self.role, run=self.run, iteration=self.number, phase=phase,
                          plan=plan, inbox=inbox, nudges=[*nudges, *(n for n in (salvage, handoff) if n)],
                          blockers=blocking, repeats=repeats,
                          digest=digest(self.store, self.s, self.run) if self.spec.digest else "")
        # another profile is another account (or vendor): its sessions are not this one's
        fresh = loop.fresh_session or bool(handoff)
        session = loop.session_id if self.s.agent_resume and not fresh else None
        self.resumed = session or ""
        prof = agents.profile(self.s, self.profile)
        argv = build_command(prof.command, prof.flags, session or None, self.s.agent_user)
        self.kind = agent_kind(prof.command)
        log_path = self.s.state_dir / "logs" / self.run / self.role / f"{self.number:06d}-{self.attempt}.jsonl"
        self.log_path = str(log_path)
        # Before every run, oldest first: this role's finished logs (none is live: one iteration per loop) and
        # then the run's (other roles' live logs kept) are pruned to log_max_bytes; each iteration's own log is
        # capped at the same size by AgentProcess, so a role never holds more than twice that.
        prune_logs(log_path.parent, self.s.log_max_age_days, self.s.log_max_bytes, keep_recent_s=0)
        prune_logs(log_path.parent.parent, self.s.log_max_age_days, self.s.log_max_bytes)
        write_log = self.store.log_writer(self.run, self.role)
        env = profile_env(prof, self.profile, agent_env(self.s, self.run, self.role))
        env[OUTBOX_ENV] = str(self._outbox())
        self.agent = AgentProcess(argv, prompt, ws.path, log_path, env=env,
                                  on_line=lambda line: write_log({"n": self.number, "line": line[:4000]}),
                                  kill_grace=self.s.kill_grace, kind=self.kind,
                                  max_log_bytes=self.s.log_max_bytes)
        if self.lost:
            return self._finish(IterationResult(killed=self.lost), self._classify(IterationResult(killed=self.lost)),
                                base=base, pushed="", violations=[], inbox_last="")
        write_log({"n": self.number, "event": "start", "attempt": self.attempt,
                   "host": self.owner.split("/")[0], "at": f"{time.time():.3f}"})
        self.agent.start()
        if self.lost:  # lost between the check and the spawn
            self.agent.kill(self.lost)
        # Belt and braces: the runner's own clock kills the agent at lease expiry even if the
        # heartbeat thread is stuck in a call.
        res = self.agent.wait(self.s.iteration_time_limit, self.s.stall_limit,
                              guard=lambda: "lease_lost" if time.monotonic() > hb.expires else None)
        if self.lost and not res.killed:
            res.killed = self.lost
        outcome = self._classify(res)
        pushed, violations = "", []
        if res.killed == "lease_lost" and ws.commits_since(base):
            self._abandon(ws, "its lease was lost while the agent ran")
        if not res.killed and ws.commits_since(base):
            violations = ws.outside(base, allowed_paths(self.spec, self.specs, self.s.reviewer_paths))
            # a secret committed and removed again is still in the history a push would publish
            violations += [f"{f} (forbidden path)" for f in forbidden_hits(ws.files_in_commits(base), forbidden)]
            # paths say which files a role may change; verbs say which machine-doc verdicts it may write there
            violations += verb_violations(self.spec, ws.added_lines(base, (STATUS_FILE, REVIEW_FILE)))
            if not violations:
                try:
                    pushed = ws.push(self._fence_ok)
                except PushRefused:
                    ref = self._abandon(ws, "push refused: its lease was lost")
                    try:
                        self._patient(lambda: self.store.event(
                            self.run, "stale_write_refused", role=self.role, iteration=self.number,
                            detail=f"push refused: fencing token no longer current; commits kept under {ref}"))
                    except Unreachable:
                        pass
                    notify("stale_write_refused", f"{self.run}/{self.role}: stale push refused",
                           f"iteration {self.number} lost its lease; its work was not pushed but kept under {ref}")
                    return "refused"
                except GitError as exc:
                    outcome = Outcome(kind="api_error", action="backoff", detail=str(exc)[:300])
        inbox_last = inbox[-1][0] if inbox and outcome.kind == "success" else ""
        return self._finish(res, outcome, base=base, pushed=pushed, violations=violations, inbox_last=inbox_last,
                            ws=ws)

    def _progress(self, ws: Workspace, base: str, plan: dict) -> tuple[str, list[str] | None]:
        """The working phase and what blocks DONE, from the machine docs at ``base`` (re-derived
        every iteration, like the watchdog does every tick)."""
        try:
            self.base_docs = ws.docs(base)
        except (GitError, OSError, subprocess.SubprocessError):
            return self.run_hash.phase, None
        pkg = from_snapshot(plan)
        phase = working_phase(pkg, self.base_docs, self.run_hash.target_phase or None)
        blocking = blockers(pkg, self.base_docs, datetime.now(UTC), timedelta(hours=self.s.done_freshness_hours))
        return phase or self.run_hash.phase, blocking

    def _pick_profile(self, phase: str, inbox: int, blockers: bool) -> str:
        """Choose this iteration's agent profile; on a switch, the handoff note for the fresh session (what
        the prompt carries: the phase, ``inbox`` INBOX messages, a list of ``blockers`` or not)."""
        names = agents.chain(self.s, self.role, self.spec.agent)
        self.windows = {n: agents.ProfileWindow.model_validate(h)
                        for n, h in self.store.agent_windows(names).items()}
        now = time.time()
        self.profile = agents.pick(self.s, self.role, self.windows, now, self.spec.agent)
        previous = self.loop.agent_profile or self.profile
        if previous == self.profile:
            return ""
        was = self.windows.get(previous, agents.ProfileWindow())
        why = (f"its usage limit ({was.limit_kind or 'usage limit'}) holds until "
               f"{clock(datetime.fromtimestamp(was.limited_until, UTC), None)}" if was.limited_until > now
               else "its usage limit has reset: back to the primary")
        rows = [h for h in self.store.history_since(self.run, count=40, reverse=True) if h.get("role") == self.role]
        outcomes = [f"#{h.get('iteration')} {h.get('profile') or '?'} {h.get('outcome')}"
                    + (f" (pushed {h['commit'][:10]})" if h.get("commit") else "") for h in rows[:5]]
        last = rows[0] if rows else {}
        return agents.handoff_nudge(previous, self.profile, why, outcomes, last=last.get("iteration", ""),
                                    pushed=last.get("commit", ""), phase=phase, inbox=inbox, blockers=blockers)

    def _fallback(self, outcome: Outcome, now: datetime) -> str:
        """Record what the iteration learnt of its profile's window; on a usage limit with fallback on,
        the profile the role continues on ("" if none: the loop stalls)."""
        limited = outcome.action == "stall" and outcome.limit is not None
        until = outcome.limit.resets_at if limited and outcome.limit is not None else None
        fields = agents.window_fields(self.rate_events, until, outcome.limit.kind if outcome.limit else "", now)
        self._patient(lambda: self.store.record_agent_window(self.profile, fields))
        if until is None or not self.s.agent_fallback:
            return ""
        windows = {**self.windows, self.profile: agents.ProfileWindow(limited_until=until.timestamp())}
        other = agents.pick(self.s, self.role, windows, now.timestamp(), self.spec.agent)
        return "" if other == self.profile else other

    def _classify(self, res: IterationResult) -> Outcome:
        return classify(res.result, res.rate_limit_events, res.exit_code, res.killed, res.stderr_tail,
                        datetime.now(UTC), retries=res.api_retries)

    def _finish(self, res: IterationResult, outcome: Outcome, *, base: str, pushed: str,
                violations: list[str], inbox_last: str, ws: Workspace | None = None) -> str:
        now = datetime.now(UTC)
        loop = self.loop  # as claimed: streak and cost change only through this loop's fenced finishes
        seen = docs_fingerprint(self.base_docs) if self.base_docs is not None else ""
        # the first iteration has nothing to compare with: only a push counts as its progress
        progressed = bool(pushed) or not seen or bool(loop.docs_seen) and seen != loop.docs_seen
        self.rate_events = res.rate_limit_events
        fallback = self._fallback(outcome, now) if self.profile and outcome.kind != "lease_lost" else ""
        d = decide(outcome, LoopFacts(fail_streak=loop.fail_streak, idle_streak=loop.idle_streak,
                                      error_key=loop.error_key, error_streak=loop.error_streak), self.spec, self.s, now,
                   ran=Ran(number=self.number, started=self.started, violations=tuple(violations),
                           pushed=pushed, progressed=progressed), fallback=fallback)
        fields: dict[str, Any] = {
            "iteration": d.iteration, "last_outcome": outcome.kind, "last_detail": outcome.detail,
            "last_exit": "" if res.exit_code is None else res.exit_code, "ended_at": f"{now.timestamp():.3f}",
            "fail_streak": d.fail_streak, "stalled_until": "", "not_before": "",
            "cost_total": f"{loop.cost_total + res.total_cost_usd:.6f}",
            "violation": ",".join(violations), "log": self.log_path,
            "fresh_session": "1" if d.fresh_session else "", "agent_profile": self.profile or loop.agent_profile,
        }
        if inbox_last:
            fields["inbox_acked_at"] = f"{now.timestamp():.3f}"
        if res.session_id and not d.fresh_session:
            fields["session_id"] = res.session_id
        if d.stalled_until is not None:
            fields["stalled_until"] = f"{d.stalled_until.timestamp():.3f}"
            fields["stalled_display"] = d.stalled_display
        if d.stop_reason:
            fields["state"] = STOPPED
            fields["stop_reason"] = d.stop_reason
        fields.update(idle_streak=d.idle_streak, error_key=d.error_key, error_streak=d.error_streak,
                      docs_seen=seen)
        if d.pause_reason:  # the breaker: no more iterations until the other role pushes, INBOX or start
            fields.update(state=PAUSED, pause_reason=d.pause_reason, paused_commit=pushed or base)
        if d.not_before is not None:
            fields["not_before"] = f"{d.not_before.timestamp():.3f}"
        fields["next_reason"] = d.next_reason
        if pushed and ws is not None:
            fields.update(last_commit=pushed, last_commit_subject=ws.subject(pushed)[:120],
                          last_commit_at=f"{now.timestamp():.3f}")
        tokens_in, tokens_out = self._tokens(res, loop, fields)
        nudge_update = ([], []) if d.keep_nudges else (list(d.nudges), self.nudges_seen)
        next_task = str(uuid.uuid4()) if d.enqueue_next else ""
        history = {
            "role": self.role, "iteration": self.number, "attempt": self.attempt, "host": self.owner.split("/")[0],
            "start": f"{self.started.timestamp():.6f}", "end": f"{now.timestamp():.6f}",
            "exit": "" if res.exit_code is None else res.exit_code, "outcome": outcome.kind,
            "detail": outcome.detail[:300], "cost": f"{res.total_cost_usd:.6f}", "turns": res.num_turns,
            "tokens_in": tokens_in, "tokens_out": tokens_out,
            "session": res.session_id, "base": base, "commit": pushed, "violations": ",".join(violations),
            "inbox_acked": inbox_last, "paused": d.pause_reason, "token": self.token, "sync_ms": f"{self.sync_ms:.1f}",
            "profile": self.profile,
        }
        run_fields: dict[str, str] = {}
        mirrored = json.loads(self.run_hash.docs or "{}").get("commit")
        after: MachineDocs | None = None
        if ws is not None and outcome.kind != "lease_lost":
            try:
                after = self.base_docs if not pushed and self.base_docs is not None else ws.docs(pushed or base)
            except (GitError, OSError, subprocess.SubprocessError):
                pass
        if after is not None and (pushed or base) != mirrored:
            run_fields["docs"] = after.model_dump_json()
        # its work is done for now (e.g. the phase is marked done, the verdicts are not in): no
        # successor until the machine docs change, an INBOX message arrives or the operator starts it
        waiting = ""
        if self.s.hold_for_verdicts and after is not None and outcome.action in ("continue", "resume") \
                and not d.pause_reason:
            waiting = waits_for_verdicts(self.spec, self.specs, from_snapshot(json.loads(self.run_hash.plan)),
                                         after, self.run_hash.target_phase or None)
        fields.update(waiting=waiting, waiting_docs=docs_fingerprint(after) if waiting and after else "")
        if waiting:
            history["waiting"] = waiting
            next_task = ""
        if res.total_cost_usd and self._fence_ok():
            self._charge(res.total_cost_usd, now)  # before finish: a reached budget holds the successor
        ok = self._patient(lambda: self.store.finish(
            self.run, self.role, self.token, self.owner, {k: str(v) for k, v in fields.items()},
            {k: str(v) for k, v in history.items()}, next_task=next_task, run_fields=run_fields,
            inbox_ack=inbox_last, nudges=nudge_update))
        if not ok:
            log.warning("iteration %s is stale; its result was refused", self.number)
            return "refused"
        for n in d.notices:
            notify(n.event, f"{self.run}/{self.role}: {n.title}", n.body)
        try:
            self._after(d, outcome)
        except Exception as exc:  # recorded already: a second record (the crash path) would repeat it
            log.warning("after iteration %s: %s: %s", self.number, exc.__class__.__name__, exc)
        self._report(outcome, res, pushed, now)
        if next_task:
            try:
                send_iteration(self.run, self.role, next_task, iteration_queue(self.s, self.run_hash, self.role))
            except Exception:  # broker hiccup: the watchdog re-sends a never-claimed iteration
                log.exception("could not enqueue the next iteration; the watchdog will")
        return outcome.kind

    def _report(self, outcome: Outcome, res: IterationResult, pushed: str, now: datetime) -> None:
        """One structured log line per iteration, the live log's end marker, and the verdict Flower shows."""
        secs = (now - self.started).total_seconds()
        self.failed = outcome.action not in ("continue", "resume") and outcome.kind != "stopped"
        fields = {"run": self.run, "role": self.role, "iteration": self.number, "host": self.owner.split("/")[0],
                  "outcome": outcome.kind, "seconds": round(secs, 3), "cost": round(res.total_cost_usd, 6),
                  "commit": pushed, "turns": res.num_turns}
        log.log(logging.WARNING if self.failed else logging.INFO,
                "iteration %s of %s/%s: %s in %.1fs, $%.4f%s", self.number, self.run, self.role, outcome.kind, secs,
                res.total_cost_usd, f", pushed {pushed[:10]}" if pushed else "", extra={"fields": fields})
        self.store.log_writer(self.run, self.role)({
            "n": self.number, "event": "end", "outcome": outcome.kind, "secs": f"{secs:.1f}",
            "cost": f"{res.total_cost_usd:.6f}", "turns": res.num_turns, "commit": pushed})

    def _tokens(self, res: IterationResult, loop: LoopState, fields: dict[str, Any]) -> tuple[int, int]:
        """This run's input and output tokens. Codex reports its thread's running total: a run
        that resumed the thread counts what it added to the total the loop saw last."""
        used_in, used_out = int(res.usage.get("input_tokens") or 0), int(res.usage.get("output_tokens") or 0)
        if self.kind != "codex" or not res.session_id or "input_tokens" not in res.usage:
            return used_in, used_out
        fields["thread_tokens"] = f"{res.session_id} {used_in} {used_out}"
        thread, seen_in, seen_out = (loop.thread_tokens.split() + ["", "0", "0"])[:3]
        if res.session_id != self.resumed or thread != res.session_id:
            return used_in, used_out
        return max(0, used_in - int(seen_in)), max(0, used_out - int(seen_out))

    def _charge(self, cost: float, now: datetime) -> None:
        day = now.strftime("%Y-%m-%d")
        charge_id = f"{self.role}:{self.number}:{self.attempt}"  # a re-run after a lost lease ran, and is billed, again
        total = self._patient(lambda: self.store.charge(self.run, self.role, day, cost, charge_id))
        budget = self.s.daily_budget_usd
        if budget and total >= budget:
            until = next_midnight(now)
            changed = self.store.pause_run(self.run, until.timestamp(), f"daily budget {usd(budget)} reached")
            if changed:
                self.store.event(self.run, "budget_reached", total=f"{total:.4f}")
                notify("budget_reached", f"{self.run}: daily budget reached",
                       f"{usd(total)} of {usd(budget)} today; loops resume at {until:%Y-%m-%d %H:%M} UTC")
