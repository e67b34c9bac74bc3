"""Package settings read once, when the kernels are first imported (at the first call).

``CACHE``: whether the ``@njit`` kernels use numba's on-disk cache (``cache=True``), which
spares every new process the compilation (seconds per kernel family). Two things switch it
off:

* the environment variable ``NUMBASOFTMAX_CACHE=0`` (``1`` or unset: on), as numbagg's
  ``NUMBAGG_CACHE`` does: for users who do not want files written, or who suspect the cache;
* numba having nowhere to write: with ``cache=True`` numba stores the cache next to the
  source (``numbasoftmax/__pycache__``) or in the user-wide cache directory
  (``~/.cache/numba``), and when neither is writable (a read-only site-packages and no
  writable home, as in many containers and batch systems) decorating a kernel raises
  ``RuntimeError: cannot cache function ...: no locator available`` and nothing works. The
  probe below asks numba's own cache locators, which also honour ``NUMBA_CACHE_DIR``, and
  then the kernels compile without the cache, with one warning saying how to get it back.

The probe compiles nothing: it creates numba's cache directory if it can (as ``cache=True``
would) and writes a temporary file there.
"""

from __future__ import annotations

import os
import warnings

ENV_VAR = "NUMBASOFTMAX_CACHE"
_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def _from_env():
    text = os.environ.get(ENV_VAR, "").strip().lower()
    if text == "" or text in _ON:
        return True
    if text in _OFF:
        return False
    raise ValueError(f"environment variable {ENV_VAR} must be 0 or 1 (caching off or on); "
                     f"got {os.environ[ENV_VAR]!r}")


def _probe():
    """A function of this package's directory for numba's cache locators to place."""


def numba_can_cache():
    """True when numba finds a writable cache location for this package's kernels."""
    try:
        from numba.core.caching import FunctionCache
    except ImportError:  # a numba without this class: let numba decide as it always did
        return True
    try:
        FunctionCache(_probe)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return False
    except Exception:  # noqa: BLE001 - the probe itself broke: keep numba's own behaviour
        return True
    return True


def _cache_setting():
    if not _from_env():
        return False
    if numba_can_cache():
        return True
    warnings.warn(
        "numbasoftmax: numba cannot write its on-disk cache here (the package directory "
        f"{os.path.dirname(os.path.abspath(__file__))} and the user cache directory are not "
        "writable), so the kernels are compiled in every new process (seconds at the first "
        "call). Set NUMBA_CACHE_DIR to a writable directory to cache them, or "
        f"{ENV_VAR}=0 to compile without the cache and silence this warning.",
        RuntimeWarning, stacklevel=2)
    return False


CACHE: bool = _cache_setting()
