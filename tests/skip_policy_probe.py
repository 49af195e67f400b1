"""Cases for tests/test_skip_policy.py, run in a pytest subprocess (not collected on its own)."""

import pytest


def test_skips():
    pytest.skip("no such tool")


def test_allowed_skip():
    pytest.skip("known and listed")


@pytest.mark.xfail(reason="an expected failure is not a skip")
def test_xfails():
    raise AssertionError


def test_passes():
    pass
