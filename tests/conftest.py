"""pytest configuration for the numbasoftmax test suite.

* The repository root goes on ``sys.path`` so that the suite runs from a checkout without
  ``pip install -e``.
* ``--fuzz-long`` multiplies the number of hypothesis examples by 100 (property tests read
  the multiplier through ``tests/_helpers.fuzz_examples``; it also reaches subprocesses as
  the environment variable NUMBASOFTMAX_FUZZ_MULTIPLIER) and draws them at random. A plain
  run draws the same examples every time (hypothesis's ``derandomize``): a CI run cannot
  fail on a draw the previous run did not make; finding new inputs is the long run's job.
* Tests marked ``soak`` are skipped unless selected with ``-m soak`` (or ``--soak``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FUZZ_LONG_FACTOR = 100


def pytest_addoption(parser):
    group = parser.getgroup("numbasoftmax")
    group.addoption("--fuzz-long", action="store_true", default=False,
                    help=f"run {FUZZ_LONG_FACTOR}x more hypothesis examples per property test")
    group.addoption("--soak", action="store_true", default=False,
                    help="run the soak (leak) tests, like -m soak")


def pytest_configure(config):
    long = config.getoption("--fuzz-long")
    os.environ["NUMBASOFTMAX_FUZZ_MULTIPLIER"] = str(FUZZ_LONG_FACTOR if long else 1)
    # before the test modules make their settings, which start from the loaded profile
    from hypothesis import settings

    settings.register_profile("numbasoftmax", derandomize=not long)
    settings.load_profile("numbasoftmax")


def pytest_collection_modifyitems(config, items):
    markexpr = config.getoption("markexpr") or ""
    if config.getoption("--soak") or "soak" in markexpr:
        return
    skip = pytest.mark.skip(reason="soak test: run with -m soak or --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def no_compute():
    """Any dask compute while active fails the test: the functions must stay lazy."""
    import dask
    from _helpers import fail_scheduler

    with dask.config.set(scheduler=fail_scheduler):
        yield
