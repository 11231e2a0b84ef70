"""The test session's own set-up (tests/conftest.py): the XLA optimization level of what the tests launch."""

from __future__ import annotations

import os

import pytest
from conftest import TEST_XLA_FLAG, USER_XLA_FLAGS, xla_flags

LEVEL_SET_BY_USER = "xla_backend_optimization_level" in USER_XLA_FLAGS
OPTED_OUT = os.environ.get("SECOND_ORDER_TEST_XLA_OPT") == "default"


@pytest.mark.skipif(LEVEL_SET_BY_USER or OPTED_OUT, reason="XLA_FLAGS or SECOND_ORDER_TEST_XLA_OPT chose the level")
def test_launched_processes_compile_at_level_zero_after_the_users_flags():
    flags = os.environ["XLA_FLAGS"].split()
    assert flags[-1] == TEST_XLA_FLAG and flags[:-1] == USER_XLA_FLAGS.split()
    assert xla_flags("--xla_force_host_platform_device_count=4").split() == [
        *flags,
        "--xla_force_host_platform_device_count=4",
    ]


@pytest.mark.xla_default
def test_a_marked_test_launches_runs_with_the_users_flags():
    assert os.environ.get("XLA_FLAGS", "") == USER_XLA_FLAGS
    assert (TEST_XLA_FLAG in xla_flags().split()) == (TEST_XLA_FLAG in USER_XLA_FLAGS.split())
