"""The typed views of Redis hashes: strings in, types out, nothing lost."""

import json

from hypothesis import given
from hypothesis import strategies as st

from ccci_dist.state.models import Claim, LoopState, RunState


def test_empty_fields_read_as_defaults_and_unknown_fields_are_kept():
    loop = LoopState.from_hash({"state": "active", "running": "", "not_before": "", "iteration": "7",
                                "nudges": json.dumps(["restart"]), "fresh_session": "1", "added_later": "x"})
    assert (loop.running, loop.not_before, loop.iteration, loop.nudges, loop.fresh_session) == (
        None, None, 7, ["restart"], True)
    assert loop.model_extra == {"added_later": "x"}
    assert LoopState.from_hash({}).exists is False and loop.exists


def test_run_state_parses_its_json_fields():
    rh = RunState.from_hash({"roles": '["builder", "reviewer"]', "queues": '{"builder": "ccci.big"}',
                             "paused_until": "", "status": "active"})
    assert rh.roles == ["builder", "reviewer"] and rh.queues == {"builder": "ccci.big"}
    assert rh.paused_until is None and rh.branch == "main"


def test_claim_reply_is_read_by_name():
    assert Claim.from_reply([1, "12", "3", "2"]) == Claim(True, 12, 3, 2, "")
    refused = Claim.from_reply([0, "busy"])
    assert not refused.ok and refused.reason == "busy"


@given(st.integers(min_value=0, max_value=2**53), st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_numbers_round_trip_through_their_stored_text(n, t):
    loop = LoopState.from_hash({"iteration": str(n), "started_at": f"{t:.3f}", "cost_total": f"{t:.6f}"})
    assert loop.iteration == n and abs(loop.started_at - t) < 1e-3 and abs(loop.cost_total - t) < 1e-5
