"""The progress bar: tqdm (the ``bench`` extra) on stderr, or nothing without it."""

from __future__ import annotations

import sys


class Progress:
    """A bar over ``total`` steps with a description of the current one."""

    def __init__(self, total, enabled=True):
        self._bar = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # no bar; the report is the same
            return
        self._bar = tqdm(total=total, file=sys.stderr, unit="cell", dynamic_ncols=True,
                         leave=False, mininterval=0.25,
                         bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")

    @property
    def active(self):
        return self._bar is not None

    def describe(self, text):
        if self._bar is not None:
            self._bar.set_description_str(text, refresh=True)

    def step(self, n=1):
        if self._bar is not None:
            self._bar.update(n)

    def close(self):
        if self._bar is not None:
            self._bar.close()
