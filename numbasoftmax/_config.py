"""Package settings read once, when the package is imported (a bad value is an error there).

``STREAM_MIN_BYTES`` (see the end of this module): from what output size the CPU kernels
write with non-temporal stores.

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


STREAM_ENV_VAR = "NUMBASOFTMAX_STREAM_BYTES"
# Larger than the last-level cache a core shares on most CPUs, so that an output read soon
# after (by a caller, or the next layer) still comes from the cache when it can fit.
STREAM_DEFAULT_BYTES = 32 << 20


def _stream_setting():
    text = os.environ.get(STREAM_ENV_VAR, "").strip().lower()
    if text == "":
        return STREAM_DEFAULT_BYTES
    if text in ("off", "never", "false", "no"):
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"environment variable {STREAM_ENV_VAR} must be a number of bytes "
                         f"(0: always) or 'off'; got {os.environ[STREAM_ENV_VAR]!r}")
    return value


STREAM_MIN_BYTES: int | None = _stream_setting()
"""Outputs of at least this many bytes are written past the caches (non-temporal stores,
see ``_vmem``): the write pass then costs memory one stream instead of two (a plain store
first reads the line it writes), as a large ``memcpy`` does. Same values either way.
``NUMBASOFTMAX_STREAM_BYTES``: a byte count (``0``: every output) or ``off`` (never);
unset: 32 MiB."""
