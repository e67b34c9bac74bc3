"""Input rules shared by the CPU, GPU and Dask paths, each stated once.

* Array kinds: which backend an argument belongs to ("numpy", "cuda" or "dask"), decided
  without importing cupy, torch or dask.
* The dtype rule: float16, float32 and float64 keep their dtype (a byte-swapped float
  becomes native), bool and integers are computed in float64, anything else is a TypeError
  naming the parameter. Backends with more float types (the GPU's bfloat16) pass them in.
* ndarray subclasses: a masked array is refused (its mask would be ignored); any other
  subclass (``np.memmap``, ``np.matrix``, ...) is computed on its ndarray data and gives a
  plain ndarray.
* The pair rule of the gradients: both arrays have the same shape (ValueError) and dtype
  (TypeError).
* ``out=``: the result's dtype (TypeError) and shape (ValueError), writeable, and no two
  of its elements at one address (a stride of 0 along an axis of more than one element:
  ValueError, as each row would overwrite the others). Two outs of one call (logsumexp's
  value and sign) must not overlap each other (ValueError naming both).
* ``dtype=``: None or a float dtype (TypeError naming it): the result's dtype, computed as
  if the inputs had that dtype.
* ``where=``: a boolean array (TypeError) that broadcasts to the input's shape
  (ValueError naming both shapes). A masked array's mask acts as ``where=~mask``; the
  result is a masked array with that mask.
* Weights (logsumexp's ``b``): the dtype rule, and they broadcast to ``x``'s shape.
* A mask, weights or per-row arguments on the other side from ``x`` (a GPU mask for host
  arrays, a host one for GPU arrays) are a TypeError naming the parameter.

The checks take plain metadata (shapes, dtypes, flags) so that any backend can apply them
to its own array types; the ``host_*`` functions apply them to numpy inputs.
"""

from __future__ import annotations

import math

import numpy as np

FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------------------------------
# array kinds

def array_kind(obj):
    """'numpy' (numpy arrays and anything else numpy may convert), 'cuda' or 'dask'."""
    if isinstance(obj, np.ndarray):
        return "numpy"
    t = type(obj)
    module = t.__module__.partition(".")[0]
    if module == "cupy" or getattr(t, "__cuda_ndarray__", False):
        return "cuda"  # cupy; numba device arrays (the simulator's have no CAI)
    if module == "torch":  # before the CAI probe: torch raises RuntimeError there when a
        return "cuda" if getattr(obj, "is_cuda", False) else "numpy"  # tensor requires grad
    if module == "dask" and hasattr(obj, "dask") and hasattr(obj, "chunks"):
        return "dask"
    if hasattr(obj, "__cuda_array_interface__"):
        return "cuda"
    return "numpy"


def backend(arrays):
    """The backend for a call on ``arrays``: the first argument that is not a host array
    decides ('cuda' or 'dask'); 'numpy' when all are host arrays."""
    for a in arrays:
        kind = array_kind(a)
        if kind != "numpy":
            return kind
    return "numpy"


def typename(obj):
    """``library.Type`` of an object, for error messages (``numpy.ndarray``, ``cupy.ndarray``,
    ``torch.Tensor``)."""
    t = type(obj)
    return f"{t.__module__.partition('.')[0]}.{t.__name__}"


def _on_gpu(named):
    """(name, description) of the first of the (name, argument) pairs that lives on a GPU
    (a GPU array, or a dask array of GPU blocks), or None."""
    for name, a in named:
        kind = array_kind(a)
        if kind == "cuda":
            return name, f"a {typename(a)}"
        if kind == "dask":
            meta = getattr(a, "_meta", None)
            if meta is not None and array_kind(meta) == "cuda":
                return name, f"a dask array of {typename(meta)} blocks"
    return None


def same_side(func, named):
    """Whether x lives on a GPU (``named``: (name, argument) pairs, x first; None arguments
    are left out), once its arguments are known to live on the same side: a GPU argument
    with x on the host (numpy, or a dask array of numpy blocks), or a host one with x a
    dask array of GPU blocks, is a TypeError naming it. (The GPU path checks an in-memory GPU
    x's arguments, devices included.)"""
    x_name, x = named[0]
    x_gpu = _on_gpu([named[0]])
    if array_kind(x) == "cuda":
        return True
    for name, a in named[1:]:
        if a is None:
            continue
        a_gpu = _on_gpu([(name, a)])
        if a_gpu and not x_gpu:
            raise TypeError(f"{func}(): {name} is {a_gpu[1]} but {x_name} is a host array "
                            f"({_host(x)}); pass both on the same device")
        if x_gpu and not a_gpu:
            raise TypeError(f"{func}(): {x_name} is {x_gpu[1]} but {name} is a host array "
                            f"({_host(a)}); pass both on the same device")
    return x_gpu is not None


def _host(a):
    meta = getattr(a, "_meta", None) if array_kind(a) == "dask" else None
    return typename(a) if meta is None else f"a dask array of {typename(meta)} blocks"


# ---------------------------------------------------------------------------------------
# dtypes

def result_dtype(dtype, name, func, extra=(), requested=None):
    """The dtype of the result for an input of ``dtype``, or a TypeError naming ``name``:
    float dtypes their own, integer and bool ones float64 (or ``requested``, the dtype=
    of the call, where one is given).

    ``extra``: a backend's own float types that are not numpy dtypes (kept as they are)."""
    if not isinstance(dtype, np.dtype):
        if dtype in extra:
            return dtype
    elif dtype in FLOATS:
        return dtype
    elif dtype.kind == "f" and dtype.newbyteorder("=") in FLOATS:  # byte-swapped float
        return dtype.newbyteorder("=")
    elif dtype.kind in "biu":
        return np.dtype(np.float64) if requested is None else requested
    floats = ", ".join([str(f) for f in FLOATS] + [str(e) for e in extra])
    raise TypeError(f"{func}(): {name} must have dtype {floats}, an integer or bool dtype; "
                    f"got {dtype}")


def requested_dtype(dtype, func):
    """None, or the float dtype that ``dtype=`` names; TypeError naming ``dtype`` else."""
    if dtype is None:
        return None
    try:
        d = np.dtype(dtype)
    except TypeError:
        d = None
    if d is None or d not in FLOATS:  # (None == float64 in numpy: test it first)
        raise TypeError(f"{func}(): dtype must be None, float16, float32 or float64; "
                        f"got {dtype!r}")
    return d


def promoted(dtypes):
    """The common result dtype of several inputs' result dtypes (e.g. x and weights); a
    Python scalar among them (``weak``) takes no part but its kind, as numpy promotes."""
    return np.result_type(*dtypes)


def weak(obj, dtype):
    """What ``promoted`` takes for an argument given as ``obj`` and read as ``dtype``: a
    Python bool, int or float stays itself, weakly typed as numpy's promotion takes Python
    scalars (``b=2.0`` keeps float32 data float32); anything else its dtype."""
    return obj if type(obj) in (bool, int, float) else dtype


def reject_masked(obj, name, func):
    """TypeError for a numpy masked array (or a dask array of them): masks are not
    supported, and computing on the data alone would silently ignore them."""
    if isinstance(obj, np.ndarray) and type(obj) is not np.ndarray and isinstance(
            obj, np.ma.MaskedArray):
        raise TypeError(f"{func}(): {name} must not be a masked array (numpy.ma."
                        f"{type(obj).__name__}): its mask would be ignored; pass "
                        f"{name}.filled(value) or {name}.data to compute on the data")


# ---------------------------------------------------------------------------------------
# pairs and out=

def _dims_equal(p, q):
    """Shapes equal; an unknown (NaN) dimension, as dask reports for unknown chunk sizes,
    matches only another unknown one."""
    return len(p) == len(q) and all(
        a == b or (_unknown_dim(a) and _unknown_dim(b)) for a, b in zip(p, q, strict=True))


def _unknown_dim(d):
    """Whether a dimension is unknown (NaN): a dask array of unknown chunk sizes."""
    return isinstance(d, float) and math.isnan(d)


def _unknown(shape):
    return any(_unknown_dim(d) for d in shape)


def _check_known(func, name, shape):
    """ValueError for an argument of unknown chunk sizes, which cannot be broadcast or
    matched to x's rows."""
    if _unknown(shape):
        raise ValueError(f"{func}(): {name} has unknown chunk sizes (shape {tuple(shape)}); "
                         f"call {name}.compute_chunk_sizes() first")


def check_pair(func, names, shapes, dtypes, given=None):
    """A gradient's two arrays: same shape (ValueError), then same dtype (TypeError):
    ``dtypes`` their result dtypes (integer and bool inputs are float64); ``given``, the
    dtypes the caller passed, named in the error (default: ``dtypes``)."""
    (p, q), (a, b) = shapes, names
    if not _dims_equal(p, q):
        hint = ""
        if _unknown(p) or _unknown(q):
            hint = " (nan: unknown chunk sizes; call .compute_chunk_sizes() first)"
        raise ValueError(f"{func}(): {a} and {b} must have the same shape; "
                         f"got {tuple(p)} and {tuple(q)}{hint}")
    if dtypes[0] != dtypes[1]:
        named = dtypes if given is None else given
        raise TypeError(f"{func}(): {a} and {b} must have the same dtype; "
                        f"got {named[0]} and {named[1]}")


def check_out(func, shape, dtype, out_shape, out_dtype, out_writeable, out_strides=None):
    """``out`` must have the result's dtype and shape and be writeable; given its
    ``out_strides``, no two of its elements may share an address (a stride of 0 along an
    axis of two or more elements of a non-empty array: each row would overwrite the others).

    (Only a zero stride is refused, not every self-overlapping layout. A C-contiguous
    non-empty array has none: the fast path, which takes only those, needs no check.)"""
    if out_dtype != dtype:
        raise TypeError(f"{func}(): out must have dtype {dtype} (the result's); got {out_dtype}")
    if tuple(out_shape) != tuple(shape):
        raise ValueError(f"{func}(): out must have shape {tuple(shape)} (the result's); "
                         f"got {tuple(out_shape)}")
    if not out_writeable:
        raise ValueError(f"{func}(): out must be writeable; got a read-only array")
    if out_strides is not None and math.prod(out_shape):
        for k, (n, s) in enumerate(zip(out_shape, out_strides, strict=True)):
            if s == 0 and n > 1:
                raise ValueError(f"{func}(): out must not have elements that share memory; "
                                 f"got stride 0 along axis {k} of length {n}")


def check_where(func, dtype, shape, target, target_shape, name="where"):
    """A mask: boolean (TypeError), broadcasting to ``target``'s shape (ValueError naming
    both shapes). ``name``: the parameter ("where", or "b" for weights, which need not be
    boolean: pass dtype None)."""
    if dtype is not None and dtype != np.bool_:
        raise TypeError(f"{func}(): {name} must be a boolean array; got dtype {dtype}")
    _check_known(func, name, shape)
    try:
        fits = np.broadcast_shapes(tuple(shape), tuple(target_shape)) == tuple(target_shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{func}(): {name} of shape {tuple(shape)} does not broadcast to "
                         f"the shape {tuple(target_shape)} of {target}")


def check_per_row(func, name, shape, x_shape, axes):
    """An argument of one value per row (logsumexp's gradient's ``lse``, ``dlse``,
    ``sign``): of the reduced shape, with or without the reduced axes kept (ValueError
    naming both). Returns whether they are kept."""
    _check_known(func, name, shape)
    keep = reduced_shape(x_shape, axes, True)
    flat = reduced_shape(x_shape, axes, False)
    shape = tuple(shape)
    if shape not in (keep, flat):
        raise ValueError(f"{func}(): {name} must have the reduced shape {flat} (or {keep} "
                         f"with the reduced axes kept); got {shape}")
    return shape == keep


def reduced_shape(shape, axes, keepdims):
    """The shape of a reduction over ``axes``."""
    if keepdims:
        return tuple(1 if a in axes else s for a, s in enumerate(shape))
    return tuple(s for a, s in enumerate(shape) if a not in axes)


# ---------------------------------------------------------------------------------------
# numpy (host) arguments

def host_unmask(arrays):
    """(plain arrays, mask or None, whether any was a masked array): numpy masked arrays
    replaced by their data; their masks (``numpy.ma.nomask`` counts as none) combined
    with or."""
    mask, any_masked, plain = None, False, []
    for a in arrays:
        if isinstance(a, np.ma.MaskedArray):
            any_masked = True
            m = np.ma.getmask(a)
            if m is not np.ma.nomask:
                m = np.asarray(m, dtype=bool)
                mask = m if mask is None else mask | m
            a = a.data
        plain.append(a)
    return tuple(plain), mask, any_masked


def host_where(where, shape, target, func):
    """``where=`` as a numpy boolean array broadcasting to ``shape`` (not broadcast)."""
    if isinstance(where, np.ma.MaskedArray):
        where = where.filled(False)
    try:
        w = np.asarray(where)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{func}(): where must be a boolean array; got "
                        f"{type(where).__name__} that numpy cannot convert ({err})") from None
    check_where(func, w.dtype, w.shape, target, shape)
    return w


def required(obj, name, func):
    """An array argument that must be given: None is a TypeError naming it (on every
    backend, before any of them looks at it)."""
    if obj is None:
        raise TypeError(f"{func}(): {name} must be array-like; got None")


def host_array(obj, name, func, dtype=None):
    """``obj`` as a numpy array of a supported dtype (a plain ndarray: subclasses are
    viewed as their ndarray data), converted to the result dtype where needed: float
    inputs keep their dtype (the kernels read them as if cast to ``dtype``), integer and
    bool ones are converted to ``dtype`` (float64 when it is None)."""
    if type(obj) is not np.ndarray:
        if isinstance(obj, np.ndarray):
            reject_masked(obj, name, func)
            obj = obj.view(np.ndarray)
        else:
            required(obj, name, func)  # numpy would make None a 0-d object array
            try:
                obj = np.asarray(obj)
            # RuntimeError: torch's, for a tensor that requires grad
            except (TypeError, ValueError, RuntimeError) as err:
                raise TypeError(f"{func}(): {name} must be array-like; got "
                                f"{type(obj).__name__} that numpy cannot convert ({err})"
                                ) from None
    rdtype = result_dtype(obj.dtype, name, func, requested=dtype)
    return obj if obj.dtype == rdtype else obj.astype(rdtype)


def host_arrays(op, arrays, dtype=None):
    """The arguments of ``op`` as checked numpy arrays (dtype rule, then the pair rule)."""
    given = [getattr(a, "dtype", None) for a in arrays]
    arrays = tuple(host_array(a, name, op.name, dtype) for a, name in zip(arrays, op.args,
                                                                           strict=True))
    if len(arrays) == 2:
        check_pair(op.name, op.args, [a.shape for a in arrays], [a.dtype for a in arrays],
                   [g if g is not None else a.dtype for g, a in zip(given, arrays, strict=True)])
    return arrays


def host_out(out, shape, dtype, func):
    """``out`` checked for a numpy result; returned as the plain ndarray the kernels write:
    a view of it, or where ``out`` holds the result dtype in the other byte order (as
    numpy's ufuncs allow), a native array that ``store_out`` copies into it."""
    if not isinstance(out, np.ndarray):
        where = " (a GPU array; the input is on the CPU)" if array_kind(out) == "cuda" else ""
        raise TypeError(f"{func}(): out must be a numpy.ndarray; got {type(out).__name__}{where}")
    reject_masked(out, "out", func)
    swapped = not out.dtype.isnative and out.dtype.newbyteorder("=") == dtype
    check_out(func, shape, dtype, out.shape, dtype if swapped else out.dtype,
              out.flags.writeable, out.strides)
    if swapped:
        return np.empty(shape, dtype)
    return out if type(out) is np.ndarray else out.view(np.ndarray)


def check_outs_apart(func, overlap):
    """logsumexp's value and sign outs (``return_sign``) must not overlap: the sign, written
    last, would be in both. ``overlap``: whether they do, as the array's library can tell
    (``host_outs_overlap`` for numpy arrays)."""
    if overlap:
        raise ValueError(f"{func}(): out[0] (the value) and out[1] (the sign) must be "
                         "separate arrays; got two that overlap in memory")


def host_outs_overlap(a, b):
    """Whether numpy arrays ``a`` and ``b`` (or None) share an element. Exact: the
    interleaved columns of one (m, 2) buffer are apart; a layout too hard to decide within
    ``np.shares_memory``'s work bound counts as overlapping."""
    if a is None or b is None:
        return False
    try:
        return np.shares_memory(a, b, max_work=100_000)
    except np.exceptions.TooHardError:
        return True


def store_out(out, written):
    """Copy ``written`` (``host_out``'s array) into ``out`` where it is not a view of it."""
    if written.dtype != out.dtype:
        np.copyto(out, written)
