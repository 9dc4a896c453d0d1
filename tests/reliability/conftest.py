"""Fixtures of the reliability suite, and the summary it prints at the end of a run.

- ``tally``: the run's :class:`~tests.reliability.tally.Tally`; tests add kills, batches
  checked, bad inputs and rows lost to it, and notes (seeds, load counts, lock timings).
- ``forkserver``: one fork server for the whole test run (see
  :mod:`tests.reliability.forkserver`).
- ``seed_for``: a seed per test, drawn from the run's base seed. The base seed is
  ``EGREGORA_RELIABILITY_SEED`` when set, else a fresh one; it is printed in the summary, so
  that a failing run can be replayed exactly.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator

import pytest
from tests.reliability.forkserver import ForkServer
from tests.reliability.tally import Tally

_TALLY = pytest.StashKey[Tally]()
_BASE_SEED = pytest.StashKey[int]()


def _tally(config: pytest.Config) -> Tally:
    if _TALLY not in config.stash:
        config.stash[_TALLY] = Tally()
    return config.stash[_TALLY]


def _base_seed(config: pytest.Config) -> int:
    if _BASE_SEED not in config.stash:
        given = os.environ.get("EGREGORA_RELIABILITY_SEED")
        config.stash[_BASE_SEED] = (
            int(given) if given else random.SystemRandom().randrange(2**32)
        )
    return config.stash[_BASE_SEED]


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Tally:
    """The figures of this run, to add to."""
    return _tally(request.config)


@pytest.fixture
def seed_for(request: pytest.FixtureRequest) -> Callable[[str], int]:
    """A seed for ``label`` within this test, a function of the run's base seed; it is
    printed, and noted in the summary."""

    def seed(label: str) -> int:
        base = _base_seed(request.config)
        value = random.Random(f"{base}:{request.node.nodeid}:{label}").randrange(2**32)
        print(f"{request.node.nodeid} {label}: seed {value} (base seed {base})")
        return value

    return seed


@pytest.fixture(scope="session")
def forkserver() -> Iterator[ForkServer]:
    """The fork server, started once per test run."""
    server = ForkServer()
    try:
        yield server
    finally:
        server.close()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """Print the reliability figures, when reliability tests ran."""
    tally = _tally(config)
    if not tally.touched:
        return
    terminalreporter.write_sep("=", "reliability summary")
    base = config.stash.get(_BASE_SEED, None)
    if base is not None:
        terminalreporter.write_line(
            f"base seed: {base} (replay with EGREGORA_RELIABILITY_SEED={base})"
        )
    for line in tally.lines():
        terminalreporter.write_line(line)
