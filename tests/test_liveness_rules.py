"""core.liveness.Gone: when a lease holder counts as gone (pure, injected clock)."""

from hypothesis import example, given
from hypothesis import strategies as st

from ccci_dist.core.liveness import Gone, holder, live_name


def test_names():
    assert holder("w1/123/abc-def") == "w1/123"
    assert live_name("w1", 123) == "ccci-live:w1/123"


def test_gone_after_two_misses_beyond_grace():
    g = Gone(grace=1.0)
    assert g.observe({"a/1"}, {"a/1"}, 0.0) == set()
    assert g.observe(set(), {"a/1"}, 0.25) == set()  # first miss starts the clock
    assert g.observe(set(), {"a/1"}, 1.0) == set()  # two misses but within the grace
    assert g.observe(set(), {"a/1"}, 1.3) == {"a/1"}


def test_due_is_the_end_of_the_first_grace():
    g = Gone(grace=1.0)
    g.observe({"a/1", "b/2"}, {"a/1", "b/2"}, 0.0)
    assert g.due() is None
    g.observe({"b/2"}, {"a/1", "b/2"}, 0.25)
    g.observe(set(), {"a/1", "b/2"}, 0.5)
    assert g.due() == 1.25  # a/1's clock started first
    assert g.observe(set(), {"a/1", "b/2"}, g.due() + 0.01) == {"a/1"}
    assert g.due() == 1.5


def test_never_seen_alive_is_never_reaped():
    g = Gone(grace=0.0)
    for t in range(10):
        assert g.observe({"b/2"}, {"a/1"}, float(t)) == set()


def test_back_in_time_resets():
    g = Gone(grace=1.0)
    g.observe({"a/1"}, {"a/1"}, 0.0)
    g.observe(set(), {"a/1"}, 0.5)
    g.observe({"a/1"}, {"a/1"}, 0.9)  # reconnected
    assert g.observe(set(), {"a/1"}, 1.6) == set()
    assert g.observe(set(), {"a/1"}, 2.2) == set()
    assert g.observe(set(), {"a/1"}, 2.7) == {"a/1"}


def test_failed_read_restarts_the_clock():
    """A Redis restart: reads fail, then the first good read misses everyone; each gets the full grace."""
    g = Gone(grace=1.0)
    g.observe({"a/1"}, {"a/1"}, 0.0)
    g.observe(set(), {"a/1"}, 0.5)
    g.failed(1.0)
    assert g.observe(set(), {"a/1"}, 5.0) == set()  # settling (5 s after the failure)
    assert g.observe(set(), {"a/1"}, 5.9) == set()
    assert g.observe(set(), {"a/1"}, 6.5) == set()  # first miss after settling
    assert g.observe(set(), {"a/1"}, 7.0) == set()
    assert g.observe(set(), {"a/1"}, 7.6) == {"a/1"}


def test_a_new_server_or_a_young_one_settles_first():
    """A restarted Redis (new run id), a promoted replica (new replication id), or one just started."""
    g = Gone(grace=1.0, settle=5.0)
    g.observe({"a/1"}, {"a/1"}, 0.0, server=("run1", "repl1"), uptime=100)
    assert g.observe(set(), {"a/1"}, 1.0, server=("run1", "repl2"), uptime=101) == set()  # failed over
    assert g.observe(set(), {"a/1"}, 3.0, server=("run1", "repl2"), uptime=103) == set()
    assert g.observe(set(), {"a/1"}, 5.5, server=("run1", "repl2"), uptime=105) == set()  # still settling
    g2 = Gone(grace=1.0, settle=5.0)
    g2.observe({"a/1"}, {"a/1"}, 0.0, server=("run1", "r"), uptime=100)
    for t in (1.0, 2.0, 3.0, 4.0):  # a server up for less than 5 s: nothing reaped
        assert g2.observe(set(), {"a/1"}, t, server=("run1", "r"), uptime=t - 0.5) == set()


@given(st.lists(st.tuples(st.booleans(), st.floats(0.01, 0.5)), max_size=40), st.floats(0.1, 3.0))
@example([(False, 0.1), (False, 0.3333333333333333)], 0.3333333333333333)  # found by tests/mutation.sh
def test_never_reaped_while_present_within_grace(reads, grace):
    """Any read pattern: reaped only after >= 2 misses spanning > grace since last present."""
    g, t, last_present, misses, first_miss = Gone(grace=grace), 0.0, 0.0, 0, None
    g.observe({"a/1"}, {"a/1"}, t)
    for present, dt in reads:
        t += dt
        out = g.observe({"a/1"} if present else set(), {"a/1"}, t)
        if present:
            misses, first_miss = 0, None
            assert out == set()
            continue
        misses += 1
        first_miss = t if first_miss is None else first_miss
        if out:
            # spans on the injected clock (not durations), in the rule's own arithmetic: t - a > g and
            # a + g < t differ in floats
            miss_span, present_span = t - first_miss, t - last_present
            assert misses >= 2 and miss_span > grace and present_span > grace
            break
        last_present = last_present if not present else t


# ---------------------------------------------------------------- exact rows (tests/MUTATION.md, liveness)
def test_defaults_grace_1_s_settle_5_s():
    g = Gone()
    g.observe({"a/1"}, {"a/1"}, 0.0)
    assert g.observe(set(), {"a/1"}, 0.5) == set()
    assert g.missing == {"a/1": (0.5, 1)}
    assert g.observe(set(), {"a/1"}, 1.5) == set()  # 1.0 s since the first miss: not more than the grace
    assert g.missing == {"a/1": (0.5, 2)}
    assert g.observe(set(), {"a/1"}, 1.75) == {"a/1"}
    assert g.missing == {}
    assert g.observe(set(), {"a/1"}, 2.0) == set()  # reaped once; its clock starts again
    assert g.missing == {"a/1": (2.0, 1)}
    g.failed(10.0)
    assert (g.quiet_until, g.missing) == (15.0, {})


def test_two_misses_are_enough_however_far_apart():
    g = Gone(grace=1.0)
    g.observe({"a/1", "b/2"}, {"a/1"}, 0.0)
    assert g.seen == {"a/1", "b/2"}
    assert g.observe(set(), {"a/1"}, 0.5) == set()
    assert g.observe(set(), {"a/1"}, 50.0) == {"a/1"}


def test_failed_keeps_the_later_quiet_time():
    g = Gone(settle=5.0)
    g.failed(10.0)
    g.failed(3.0)
    assert g.quiet_until == 15.0
    g.observe({"a/1"}, {"a/1"}, 14.0)
    assert g.observe(set(), {"a/1"}, 14.5) == set() and g.missing == {}  # still quiet
    assert g.observe(set(), {"a/1"}, 15.0) == set() and g.missing == {"a/1": (15.0, 1)}  # quiet ends at 15.0


def test_a_read_without_server_id_keeps_the_known_one():
    g = Gone(grace=1.0, settle=5.0)
    g.observe({"a/1"}, {"a/1"}, 0.0, server=("r1",))
    g.observe({"a/1"}, {"a/1"}, 1.0)
    assert g.server == ("r1",) and g.quiet_until == 0.0
    g.observe({"a/1"}, {"a/1"}, 2.0, server=("r1",), uptime=5.0)  # the same server, old enough: no settling
    assert g.quiet_until == 0.0
    g.observe({"a/1"}, {"a/1"}, 3.0, server=("r2",))
    assert (g.server, g.quiet_until) == (("r2",), 8.0)


def test_holders_never_seen_do_not_stop_the_count_of_the_others():
    # a/1 among 100 holders never seen alive: whatever the set's order, a/1 is counted and reaped
    old = {f"old/{i}" for i in range(100)}
    g = Gone(grace=1.0)
    g.observe({"a/1"}, {"a/1"}, 0.0)
    assert g.observe(set(), {"a/1", *old}, 0.5) == set()
    assert g.missing == {"a/1": (0.5, 1)}
    assert g.observe(set(), {"a/1", *old}, 2.0) == {"a/1"}
