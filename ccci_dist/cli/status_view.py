"""Render the cockpit model (engine/status.py) for a terminal: fits 80 columns, times with zone."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ccci_dist.core.cockpit import ago, usd, when
from ccci_dist.core.logview import printable
from ccci_dist.engine.status import AgentWindow, RunStatus

STATE_STYLE = {"running": "green", "queued": "green", "scheduled": "cyan", "due": "cyan", "stalled": "yellow",
               "paused": "yellow", "held": "cyan", "stopped": "red", "done": "bold green", "active": "green",
               "stuck": "bold red"}


def _style(state: str) -> str:
    return STATE_STYLE.get(state.split()[0], "bold red" if state.startswith("waiting") else "")


def render_run(st: RunStatus) -> RenderableType:
    """One run: header, liveness, phases, loops, D-items, what blocks DONE, cost."""
    parts: list[RenderableType] = []
    head = Text()
    head.append(f"run {st.run}: ", style="bold")
    head.append(printable(st.header.split(": ", 1)[1] if ": " in st.header else st.header), style=_style(st.state))
    parts.append(head)
    parts.append(Text(f"as of {when(st.generated_at)}", style="dim"))
    live = st.liveness
    wd = Text()
    wd.append(live.watchdog.words, style="green" if live.watchdog.running else "bold red")
    parts.append(wd)
    if not live.workers:
        parts.append(Text("workers: none alive", style="bold red"))
    for w in live.workers:
        beat = f"beat {ago(w.heartbeat_age)} ago" if w.heartbeat_age is not None else "beat ?"
        parts.append(Text(printable(f"worker {w.node} on {w.host} ({w.pool}, {beat}): {', '.join(w.queues)}")))
    seq = Text("phases: ")
    for p in st.phases:
        mark, style = {"done": ("✓", "green"), "working": ("▶", "bold yellow"), "pending": ("·", "dim")}[p.state]
        seq.append(f"{mark}{p.id} ", style=style)
    seq.append(f"({st.phase_index} of {st.phase_count}; deferred {st.deferred})", style="dim")
    parts.append(seq)
    parts.append(Text(""))
    for lp in st.loops.values():
        line = Text()
        line.append(f"{lp.role} ", style="bold")
        line.append(lp.state, style=_style(lp.state))
        line.append(f" · iteration {lp.iteration}")
        if lp.host:
            line.append(printable(f" · {lp.host}"))
        if lp.lease_age is not None:
            line.append(f" · lease renewed {lp.lease_age:.1f}s ago")
        parts.append(line)
        parts.append(Text(printable(f"  why:  {lp.reason}")))
        parts.append(Text(f"  next: {lp.next_action}"))
        last = f"  last: {lp.last_outcome or '—'}"
        if lp.last_commit:
            last += f" · {lp.last_commit.sha[:8]} {lp.last_commit.subject}"
        parts.append(Text(printable(last), overflow="ellipsis", no_wrap=True))
        if lp.next_start:
            parts.append(Text(f"  starts {when(lp.next_start)} ({lp.next_reason or 'scheduled'})"))
        if lp.agent_profile and lp.agent_profile != "default":
            parts.append(Text(f"  agent: {lp.agent_profile}"))
        parts.append(Text(f"  cost today ${lp.cost_today:.4f} · total ${lp.cost_total:.4f}"
                          f" · restarts {lp.restarts}", style="dim"))
    for w in st.agent_windows:
        parts.extend(render_window(w))
    if st.items:
        t = Table("item", "verdict", "verified at", "commit", "expires in", title="Definition of Done",
                  title_justify="left", padding=(0, 1))
        for it in st.items:
            style = "bold red" if it.verdict == "FAILED" else "yellow" if it.stale or it.verdict == "unverified" else ""
            left = "—" if it.expires_in is None else f"stale {ago(-it.expires_in)}" if it.stale else ago(it.expires_in)
            t.add_row(it.item, it.verdict, when(it.verified_at), it.commit[:8], left, style=style)
        parts.append(t)
    parts.append(Text(f"blocks DONE: {st.blocks_done or 'nothing'}", style="yellow" if st.blocks_done else "green"))
    for m in st.undelivered:
        parts.append(Text(printable(f"undelivered INBOX message [{m['id']}] to {m['role']}: {m['text'][:100]}"),
                          style="yellow"))
    c = st.cost
    parts.append(Text(f"cost: today ${c.today:.2f} · 7 days ${c.last_7_days:.2f} · total ${c.total:.2f}"))
    if c.daily_budget is not None:  # a line of its own: on the cost line it went past 80 columns and wrapped
        parts.append(Text(f"budget left today {usd(c.budget_left_today)} of {usd(c.daily_budget)}"))
    return Group(*parts)


def render_window(w: AgentWindow) -> list[Text]:
    """An agent profile's quota window in at most two lines of 80 columns, times to the second with zone."""
    line = Text(f"agent {w.profile}: ", style="bold")
    if w.state == "limited":
        line.append(f"limited ({w.limit_kind or 'usage limit'}) until {when(w.limited_until)}", style="yellow")
    else:
        line.append("available", style="green")
    lines = [line]
    if w.last_warning is not None:
        used = f", {w.utilization:.0%} used" if w.utilization is not None else ""
        lines.append(Text(f"  last warning {when(w.last_warning)} ({w.warning_kind or 'window'}{used})"))
    for t in lines:
        t.overflow, t.no_wrap = "ellipsis", True
    return lines


def render_all(runs: list[RunStatus]) -> RenderableType:
    if not runs:
        return Text("no runs yet; `ccci-dist start` creates one")
    out: list[RenderableType] = []
    for i, st in enumerate(runs):
        if i:
            out.append(Text(""))
        out.append(render_run(st))
    return Group(*out)
