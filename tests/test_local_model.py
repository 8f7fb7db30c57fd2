"""The embedded model's plain-Python parts that need no model: how many threads it takes."""

from __future__ import annotations

import os
import sys

import pytest

from pytest_judgeopt import local_model


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_idle_cores_are_read_from_the_kernel_between_none_and_all() -> None:
    idle = local_model.idle_cores(0.05)
    assert idle is not None
    assert 0.0 <= idle <= (os.cpu_count() or 1) + 1e-9


def test_threads_are_at_least_one_and_at_most_the_cores_this_process_may_use() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    assert 1 <= local_model.threads() <= cores
