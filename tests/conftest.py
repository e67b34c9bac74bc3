"""pytest configuration for the numbasoftmax test suite.

* The repository root goes on ``sys.path`` so that the suite runs from a checkout without
  ``pip install -e``.
* ``--fuzz-long`` multiplies the number of hypothesis examples by 100 (property tests read
  the multiplier through ``tests/_helpers.fuzz_examples``; it also reaches subprocesses as
  the environment variable NUMBASOFTMAX_FUZZ_MULTIPLIER) and draws them at random. A plain
  run draws the same examples every time (hypothesis's ``derandomize``): a CI run cannot
  fail on a draw the previous run did not make; finding new inputs is the long run's job.
* Tests marked ``soak`` are skipped unless selected with ``-m soak`` (or ``--soak``).
* Every ``FREEZE_EVERY`` tests (and at the end of each module) the young generations are
  collected and everything alive is frozen (``gc.freeze``): a test process keeps numba's
  compiled kernels for the whole run, millions of objects, and each automatic full
  collection walked all of them again (about a tenth of a compile-heavy module's time).
  Garbage left in the old generation at a freeze is never collected: a test that needs its
  own garbage collected calls ``gc.collect()`` itself, which reaches what it made.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FUZZ_LONG_FACTOR = 100
FREEZE_EVERY = 50
_run_since_freeze = 0


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


@pytest.hookimpl(trylast=True)  # after the test's fixtures are torn down
def pytest_runtest_teardown(item, nextitem):
    global _run_since_freeze
    _run_since_freeze += 1
    if (_run_since_freeze >= FREEZE_EVERY or nextitem is None
            or nextitem.module is not item.module):
        gc.collect(1)
        gc.freeze()
        _run_since_freeze = 0


@pytest.fixture
def no_compute():
    """Any dask compute while active fails the test: the functions must stay lazy."""
    import dask
    from _helpers import fail_scheduler

    with dask.config.set(scheduler=fail_scheduler):
        yield
