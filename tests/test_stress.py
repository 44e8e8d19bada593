"""The kill tests again, while other processes keep every CPU busy (marker ``stress``).

A killed reader, writer, partition or coordinator must lose nothing, and a loaded machine is
where races show: each kind is killed ``DUALSYNC_STRESS_LOOPS`` times (1 by default, which
CI runs). By hand, many times:

    DUALSYNC_STRESS_LOOPS=10 .venv/bin/python -m pytest -m stress
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from recovery_harness import kill_while_streaming

from conftest import Apps

pytestmark = [pytest.mark.ray, pytest.mark.stress]

LOOPS = int(os.environ.get("DUALSYNC_STRESS_LOOPS", "1"))


@pytest.fixture
def busy_cpus() -> Iterator[list[subprocess.Popen[bytes]]]:
    """One process spinning per CPU, for the length of the test."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        yield spinners
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


@pytest.mark.parametrize("loop", range(LOOPS))
@pytest.mark.parametrize("kind", ["reader", "writer", "partition", "coordinator"])
def test_a_killed_actor_loses_nothing_while_the_cpus_are_busy(
    busy_cpus: list[subprocess.Popen[bytes]], engine: Any, apps: Apps, kind: str, loop: int
) -> None:
    kill_while_streaming(engine, apps, kind)
    assert all(s.poll() is None for s in busy_cpus)  # the load lasted the whole test
