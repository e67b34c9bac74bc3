"""Vector loads and stores for the CPU kernels: memory <-> ``_simd.Vec``.

Contiguous runs of lanes (masked loads and stores), strided lanes (gathers and scatters),
whole tiles of short consecutive rows (contiguous vectors regrouped by lane shuffles, also
under a mask), streaming (non-temporal) stores, lane masks from boolean arrays
(``where=``), prefetch hints, and 1-D views and new arrays built in compiled code. Each
access converts between the array's storage type and the compute type (see ``_simd``:
float16 viewed as uint16, inputs read "as if cast" viewed as the integer type naming the
pair), so a kernel never handles storage types itself.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed, impl_ret_new_ref
from numba.extending import intrinsic

from ._markers import MarkerType
from ._simd import (
    _CODES,
    _I32,
    _I64,
    _IR_FLOATS,
    MASK,
    Vec,
    W,
    _call,
    _const,
    _intrinsic1,
    _lane_mask,
    _splat,
    _stored,
    _suffix,
    compute_type,
)

# ---------------------------------------------------------------------------------------
# loads and stores

def _storage_ir(context, dtype):
    return _IR_FLOATS[_CODES[dtype][0]]


def _round_to_odd_float(builder, x):
    """double lanes -> float lanes rounded to odd (truncated, lowest bit set if inexact):
    rounding that to half then gives the correctly rounded half of ``x`` (a plain
    double -> float -> half would round twice)."""
    fty = ir.VectorType(ir.FloatType(), W)
    ity = ir.VectorType(_I32, W)
    r = builder.fptrunc(x, fty)
    back = builder.fpext(r, x.type)
    inexact = builder.fcmp_ordered("!=", back, x)
    bits = builder.bitcast(r, ity)
    away = builder.fcmp_ordered(">", _intrinsic1(builder, "fabs", back),
                                _intrinsic1(builder, "fabs", x))
    bits = builder.select(away, builder.sub(bits, _const(ity, 1)), bits)
    bits = builder.select(inexact, builder.or_(bits, _const(ity, 1)), bits)
    return builder.bitcast(bits, fty)


def _to_compute(builder, raw, dtype, cty):
    """Loaded storage lanes -> compute lanes, through the rounding type of ``dtype``."""
    _, rounding, _ = _CODES[dtype]
    if rounding is not None:
        rty = ir.VectorType(_IR_FLOATS[rounding], W)
        if rounding == "half" and isinstance(raw.type.element, ir.DoubleType):
            raw = _round_to_odd_float(builder, raw)
        raw = builder.fptrunc(raw, rty)
    if raw.type == cty:
        return raw
    return builder.fpext(raw, cty)


def _element_ptr(builder, arrty, a, index):
    """Pointer to element ``index`` (intp) of the 1-D array struct ``a``, any layout."""
    if arrty.layout in "CF":
        return builder.gep(a.data, [index])
    stride = cgutils.unpack_tuple(builder, a.strides, 1)[0]
    addr = builder.add(builder.ptrtoint(a.data, _I64), builder.mul(index, stride))
    return builder.inttoptr(addr, a.data.type)


def _element_ptrs(context, builder, arrty, arr, index, step):
    """(pointer to element ``index``, None) for a contiguous run of lanes, else
    (None, <W x i64> addresses of elements ``index + lane*step``)."""
    a = context.make_array(arrty)(context, builder, arr)
    if arrty.layout in "CF" and step is None:
        return _element_ptr(builder, arrty, a, index), None
    lanes = ir.Constant(ir.VectorType(_I64, W), list(range(W)))
    if step is not None:
        lanes = builder.mul(lanes, _splat(builder, step))
    offs = builder.add(_splat(builder, index), lanes)
    if arrty.layout in "CF":
        stride = ir.Constant(_I64, arrty.dtype.bitwidth // 8)
    else:
        stride = cgutils.unpack_tuple(builder, a.strides, 1)[0]
    base = builder.ptrtoint(a.data, _I64)
    return None, builder.add(_splat(builder, base), builder.mul(offs, _splat(builder, stride)))


def _access(context, builder, sig, args, step):
    """What a load or a store of lanes needs: (storage vector type, lane mask, alignment,
    pointer or None, addresses or None); see ``_element_ptrs``."""
    arrty = sig.args[0]
    vsty = ir.VectorType(_storage_ir(context, arrty.dtype), W)
    mask = _lane_mask(builder, args[-2], sig.args[-2])
    align = ir.Constant(_I32, arrty.dtype.bitwidth // 8)
    ptr, addrs = _element_ptrs(context, builder, arrty, args[0], args[1],
                               args[2] if step else None)
    return vsty, mask, align, ptr, addrs


def _all_lanes(builder, sig, args):
    """i1: all W lanes valid, for a run-time lane count; None for the ``ALL`` marker.

    A run-time count reaches the loads and stores of kernel functions that LLVM did not
    inline. Masked with it, a float16 access has no vector instruction on AVX2 and becomes
    one branch per lane, and a masked float32 store is microcoded on AMD cores; the whole
    vector, the common case, then takes a plain access instead (the same values).
    """
    if isinstance(sig.args[-2], MarkerType):
        return None
    k = args[-2]
    return builder.icmp_signed(">=", k, ir.Constant(k.type, W))


def _whole(builder, sig, args, ptr, step):
    """When an access takes its whole-vector form (see ``_either``): a contiguous run when
    ``_all_lanes`` says so; a gather or scatter with a step whenever all W lanes are valid
    (always for the ``ALL`` marker: a constant LLVM folds away); never for the
    consecutive elements of a strided array."""
    if ptr is not None:
        return _all_lanes(builder, sig, args)
    if not step:
        return None
    return _all_lanes(builder, sig, args) or ir.Constant(ir.IntType(1), 1)


def _either(builder, cond, full, partial):
    """``full()`` if ``cond`` else ``partial()``, as a branch (``cond`` None: partial);
    their value, or None for code that makes none."""
    if cond is None:
        return partial()
    with builder.if_else(cond, likely=True) as (whole, part):
        with whole:
            a = full()
            a_block = builder.block
        with part:
            b = partial()
            b_block = builder.block
    if a is None:
        return None
    phi = builder.phi(a.type)
    phi.add_incoming(a, a_block)
    phi.add_incoming(b, b_block)
    return phi


def _load_lanes(context, builder, sig, args, step):
    vsty, mask, align, ptr, addrs = _access(context, builder, sig, args, step)
    zero = ir.Constant(vsty, None)
    if ptr is not None:
        vp = builder.bitcast(ptr, vsty.as_pointer())
        raw = _either(builder, _all_lanes(builder, sig, args),
                      lambda: builder.load(vp, align=align.constant),
                      lambda: _call(builder, f"llvm.masked.load.{_suffix(vsty)}.p0",
                                    [vp, align, mask, zero], ret=vsty))
    else:
        ptrs = builder.inttoptr(addrs, ir.VectorType(vsty.element.as_pointer(), W))
        raw = _either(builder, _whole(builder, sig, args, ptr, step),
                      lambda: _lanewise_load(context, builder, sig, args, vsty, align),
                      lambda: _call(builder, f"llvm.masked.gather.{_suffix(vsty)}.v{W}p0",
                                    [ptrs, align, mask, zero], ret=vsty))
    ctype = compute_type(sig.args[0].dtype)
    cty = ir.VectorType(context.get_value_type(ctype), W)
    value = _to_compute(builder, raw, sig.args[0].dtype, cty)
    fillv = _splat(builder, context.cast(builder, args[-1], sig.args[-1], ctype))
    return builder.select(mask, value, fillv)


# A gather or scatter with a step (short rows gathered into a tile and scattered back) is W
# scalar loads or stores when every lane is valid, not LLVM's masked gather and scatter
# (which the consecutive elements of a strided array still take): for AVX-512 those
# become vgather / vscatter instructions, which made the short-row kernel 1.6-2.8x slower
# on an AMD Zen 4 core (float32, rows of 4 to 31 elements, one thread); the values are the
# same either way. Each lane's address is computed as a scalar (extracting it from the
# address vector would cost three instructions a lane).
def _lane_ptrs(context, builder, sig, args, elty):
    """Pointers (to ``elty``) to elements ``index + lane*step`` of a gather or scatter
    (arguments: array, index, step, ...), one per lane."""
    arrty = sig.args[0]
    a = context.make_array(arrty)(context, builder, args[0])
    index, step = (context.cast(builder, args[k], sig.args[k], types.intp) for k in (1, 2))
    return [builder.bitcast(_element_ptr(builder, arrty, a, builder.add(
        index, builder.mul(step, ir.Constant(_I64, lane)))), elty.as_pointer())
        for lane in range(W)]


def _lanewise_load(context, builder, sig, args, vsty, align):
    v = ir.Constant(vsty, None)
    for lane, p in enumerate(_lane_ptrs(context, builder, sig, args, vsty.element)):
        v = builder.insert_element(v, builder.load(p, align=align.constant),
                                   ir.Constant(_I32, lane))
    return v


def _store_lanes(context, builder, sig, args, step):
    vsty, mask, align, ptr, addrs = _access(context, builder, sig, args, step)
    value = args[-1]
    if value.type != vsty:
        value = builder.fptrunc(value, vsty)
    if ptr is not None:
        target = builder.bitcast(ptr, vsty.as_pointer())
        name = f"llvm.masked.store.{_suffix(vsty)}.p0"
    else:
        target = builder.inttoptr(addrs, ir.VectorType(vsty.element.as_pointer(), W))
        name = f"llvm.masked.scatter.{_suffix(vsty)}.v{W}p0"
    fnty = ir.FunctionType(ir.VoidType(), [vsty, target.type, _I32, mask.type])
    fn = builder.module.declare_intrinsic(name, fnty=fnty)

    def whole():
        if ptr is not None:
            builder.store(value, target, align=align.constant)
            return
        for lane, p in enumerate(_lane_ptrs(context, builder, sig, args, vsty.element)):
            builder.store(builder.extract_element(value, ir.Constant(_I32, lane)), p,
                          align=align.constant)

    def masked():
        builder.call(fn, [value, target, align, mask])

    _either(builder, _whole(builder, sig, args, ptr, step), whole, masked)
    return context.get_dummy_value()


def _check_load(arr, k, fill):
    return (isinstance(arr, types.Array) and arr.ndim == 1 and compute_type(arr.dtype)
            and isinstance(k, (types.Integer, MarkerType))
            and isinstance(fill, (types.Float, types.Integer)))


@intrinsic
def vload(typingctx, arr, index, k, fill):
    """Elements ``index .. index+k-1`` of a 1-D array; lanes from k on are ``fill``."""
    if not _check_load(arr, k, fill):
        return None
    sig = Vec(compute_type(arr.dtype))(arr, index, k, fill)
    return sig, lambda c, b, s, a: _load_lanes(c, b, s, a, step=False)


@intrinsic
def vgather(typingctx, arr, index, step, k, fill):
    """Elements ``index + lane*step`` for lanes < k; lanes from k on are ``fill``."""
    if not _check_load(arr, k, fill):
        return None
    sig = Vec(compute_type(arr.dtype))(arr, index, step, k, fill)
    return sig, lambda c, b, s, a: _load_lanes(c, b, s, a, step=True)


def _check_store(arr, value):
    return (isinstance(arr, types.Array) and isinstance(value, Vec) and _stored(arr.dtype)
            and compute_type(arr.dtype) == value.dtype)


@intrinsic
def vstore(typingctx, arr, index, k, value):
    """Store lanes < k at ``index ..``, converting to the array's storage type."""
    if not _check_store(arr, value):
        return None
    return types.none(arr, index, k, value), lambda c, b, s, a: _store_lanes(c, b, s, a, False)


@intrinsic
def vscatter(typingctx, arr, index, step, k, value):
    """Store lane l < k at ``index + l*step``."""
    if not _check_store(arr, value):
        return None
    sig = types.none(arr, index, step, k, value)
    return sig, lambda c, b, s, a: _store_lanes(c, b, s, a, True)


# W short rows of n elements, consecutive in memory (a whole tile of a C-contiguous array
# whose row stride is n), are n contiguous vector loads (stores) whose lanes are regrouped
# by shuffles into the tile's n vectors (and back): ~n - 1 two-vector shuffles for each
# vector where the scalar form (above) takes W loads and lane insertions. Up to this row
# length; longer rows spread a tile vector over too many loaded vectors for shuffles to pay.
# Data movement only: the values are the same either way.
TILE_SHUFFLE_MAX = 8
# Rows of TILE_SHUFFLE_MAX + 1 .. TILE_TRANSPOSE_MAX elements: the tile as blocks of W
# columns (the last one possibly partial), each row's part of a block one vector load (store), the
# W x W block transposed in log2(W) rounds of two-vector shuffles (``_transposed``):
# 2 log2(W) shuffles a tile vector whatever n, and one code path for all these n, where
# the picks above would take ~n - 1 and the scalar form W loads (stores) and lane moves
# (~40 % of a tile's time at n = 16 on a Zen 4 core went to those). A row's load in the
# last block reaches into the next row (those lanes are dropped) and its store writes
# there before the next row's own stores do; only the tile's last row, whose reach would
# leave the tile, is masked.
TILE_TRANSPOSE_MAX = 2 * W


def _shuffled(builder, vecs, picks):
    """The vector whose lane l is lane ``picks[l][1]`` of ``vecs[picks[l][0]]``, built by
    two-vector shuffles with constant masks (LLVM merges them into permutes)."""
    mty = ir.VectorType(_I32, W)
    acc = None
    for v in sorted({v for v, _ in picks}):
        if acc is None:
            mask = [q if s == v else 0 for s, q in picks]
            acc = builder.shuffle_vector(vecs[v], vecs[v], ir.Constant(mty, mask))
        else:
            mask = [W + q if s == v else lane for lane, (s, q) in enumerate(picks)]
            acc = builder.shuffle_vector(acc, vecs[v], ir.Constant(mty, mask))
    return acc


def _rows_switch(builder, n, case, longer=None):
    """i1: whether ``case(c)`` ran for the run-time row length ``n`` (one branch per c in
    1 .. TILE_SHUFFLE_MAX), or ``longer()`` for the longer rows up to TILE_TRANSPOSE_MAX
    (with n at run time; None: those rows too run nothing); other lengths run nothing."""
    after = builder.append_basic_block("rows.after")
    default = builder.append_basic_block("rows.other")
    switch = builder.switch(n, default)
    incoming = []
    for c in range(1, TILE_SHUFFLE_MAX + 1):
        block = builder.append_basic_block(f"rows.{c}")
        switch.add_case(ir.Constant(n.type, c), block)
        builder.position_at_end(block)
        case(c)
        builder.branch(after)
        incoming.append(builder.block)
    builder.position_at_end(default)
    ran = ir.Constant(ir.IntType(1), 0)
    if longer is not None:
        ran = builder.and_(
            builder.icmp_signed(">", n, ir.Constant(n.type, TILE_SHUFFLE_MAX)),
            builder.icmp_signed("<=", n, ir.Constant(n.type, TILE_TRANSPOSE_MAX)))
        with builder.if_then(ran, likely=True):
            longer()
    builder.branch(after)
    other = builder.block
    builder.position_at_end(after)
    done = builder.phi(ir.IntType(1))
    for block in incoming:
        done.add_incoming(ir.Constant(ir.IntType(1), 1), block)
    done.add_incoming(ran, other)
    return done


def _tile_rows_args(rows, tile, k, store):
    """The shuffled forms' typing: a 1-D array of rows (loaded, or ``store``d: a result
    type), a C-contiguous tile of their compute type, and the lane count (only the ``ALL``
    marker takes the shuffled form)."""
    return (isinstance(rows, types.Array) and rows.ndim == 1
            and (_stored(rows.dtype) if store else compute_type(rows.dtype) is not None)
            and isinstance(tile, types.Array) and tile.ndim == 1 and tile.layout == "C"
            and tile.dtype == compute_type(rows.dtype)
            and isinstance(k, (types.Integer, MarkerType)))


def _tile_rows_call(context, builder, sig, args, move, longer=None):
    """The shuffled form (arguments: rows, index, stride, k, n, tile, and a mask after
    them) for the ``ALL`` marker, C-contiguous rows (and mask) and a row stride equal to n
    (checked at run time), else the constant False: ``move(c, element pointer of the rows
    at index, tile data pointer)`` moves a tile of rows of c elements, ``longer(n, ...)``
    (the same pointers) one of longer rows (None: those give False too)."""
    rows_ty, _, _, k_ty, _, tile_ty = sig.args[:6]
    false = ir.Constant(ir.IntType(1), 0)
    if any(t.layout != "C" for t in (rows_ty, *sig.args[6:7])) or not isinstance(
            k_ty, MarkerType):
        return false
    index, stride, n = (context.cast(builder, args[i], sig.args[i], types.intp)
                        for i in (1, 2, 4))
    rows = context.make_array(rows_ty)(context, builder, args[0])
    tile = context.make_array(tile_ty)(context, builder, args[5])
    ptr = builder.gep(rows.data, [index])
    with builder.if_else(builder.icmp_signed("==", stride, n), likely=True) as (same, other):
        with same:
            done = _rows_switch(builder, n, lambda c: move(c, ptr, tile.data),
                                longer and (lambda: longer(n, ptr, tile.data)))
            same_block = builder.block
        with other:
            other_block = builder.block
    result = builder.phi(ir.IntType(1))
    result.add_incoming(done, same_block)
    result.add_incoming(false, other_block)
    return result


def _vector_at(builder, ptr, offset, vty):
    return builder.bitcast(builder.gep(ptr, [ir.Constant(_I64, offset)]), vty.as_pointer())


def _tile_rows(rows, index, stride, k, n, tile, move, store, where=()):
    """(signature, codegen) of a shuffled tile form (arguments: rows, index, stride, k, n,
    tile; ``store``: into the rows), or None for other types: ``move(builder, c, rows
    pointer, tile pointer, (rows' storage vector type, tile vector type, rows' and tile's
    alignment), rows' dtype, keep)`` moves a tile of rows of c elements. ``where``: the
    types of a mask (bytes lying as the rows do from ``index``) and, for a gather, of a
    fill value: ``keep(i, lanes)`` then gives the rows' W elements from element i where the mask's
    bytes are not 0 and the fill (a store: 0) elsewhere; None without a mask."""
    if not (_tile_rows_args(rows, tile, k, store)
            and all(isinstance(t, types.Integer) for t in (index, stride, n))
            and _where_args(where, store)):
        return None

    def codegen(context, builder, sig, args):
        dtype, tile_dtype = sig.args[0].dtype, sig.args[5].dtype
        vtys = (ir.VectorType(_storage_ir(context, dtype), W),
                ir.VectorType(context.get_value_type(tile_dtype), W),
                dtype.bitwidth // 8, tile_dtype.bitwidth // 8)
        keep = _keep(context, builder, sig, args, vtys[0]) if where else None
        if not store:
            def longer(n, ptr, t):
                _row_blocks_to_tile(builder, n, ptr, t, vtys, dtype, keep)
        elif not where:  # masked stores of the longer rows are left to the caller
            def longer(n, ptr, t):
                _tile_to_row_blocks(builder, n, ptr, t, vtys, dtype)
        else:
            longer = None
        return _tile_rows_call(context, builder, sig, args,
                               lambda c, ptr, t: move(builder, c, ptr, t, vtys, dtype, keep),
                               longer)

    return types.boolean(rows, index, stride, k, n, tile, *where), codegen


def _where_args(where, store):
    """Whether ``where`` types a tile form's mask: none, or a 1-D byte array and (a gather
    only) a float fill value."""
    if not where:
        return True
    mask, *fill = where
    return (isinstance(mask, types.Array) and mask.ndim == 1 and mask.dtype == types.uint8
            and len(fill) == (0 if store else 1)
            and all(isinstance(t, types.Float) for t in fill))


def _keep(context, builder, sig, args, vsty):
    """The ``keep`` of a masked tile form (see ``_tile_rows``): the mask's W bytes from
    element i select between the lanes and the fill, converted to the rows' storage type (exactly:
    the fills are 0 and -inf)."""
    mask = context.make_array(sig.args[6])(context, builder, args[6])
    bty = ir.VectorType(ir.IntType(8), W)
    fill = ir.Constant(vsty, None)
    if len(args) > 7:
        value = context.cast(builder, args[7], sig.args[7], types.float64)
        if not isinstance(vsty.element, ir.DoubleType):
            # through float: a double -> half conversion is a library call the JIT lacks
            value = builder.fptrunc(value, ir.FloatType())
            if isinstance(vsty.element, ir.HalfType):
                value = builder.fptrunc(value, vsty.element)
        fill = _splat(builder, value)

    def keep(i, lanes, valid=None):
        """``valid``: the lanes whose bytes may be read (the others' count as 0)."""
        at = builder.bitcast(builder.gep(mask.data, [ir.Constant(_I64, i) if isinstance(
            i, int) else i]), bty.as_pointer())
        bytes_ = (builder.load(at, align=1) if valid is None else _call(
            builder, f"llvm.masked.load.{_suffix(bty)}.p0",
            [at, ir.Constant(_I32, 1), valid, ir.Constant(bty, None)], ret=bty))
        return builder.select(builder.icmp_unsigned("!=", bytes_, ir.Constant(bty, None)),
                              lanes, fill)
    return keep


def _rows_to_tile(builder, c, ptr, tile, vtys, dtype, keep):
    vsty, cty, align, tile_align = vtys
    vecs = [builder.load(_vector_at(builder, ptr, v * W, vsty), align=align)
            for v in range(c)]
    if keep is not None:
        vecs = [keep(v * W, lanes) for v, lanes in enumerate(vecs)]
    for j in range(c):
        raw = _shuffled(builder, vecs, [divmod(lane * c + j, W) for lane in range(W)])
        builder.store(_to_compute(builder, raw, dtype, cty),
                      _vector_at(builder, tile, j * W, cty), align=tile_align)


def _tile_to_rows(builder, c, ptr, tile, vtys, dtype, keep):
    vsty, cty, align, tile_align = vtys
    vecs = []
    for j in range(c):
        value = builder.load(_vector_at(builder, tile, j * W, cty), align=tile_align)
        vecs.append(value if value.type == vsty else builder.fptrunc(value, vsty))
    for v in range(c):
        picks = [((v * W + q) % c, (v * W + q) // c) for q in range(W)]
        lanes = _shuffled(builder, vecs, picks)
        if keep is not None:
            lanes = keep(v * W, lanes)
        builder.store(lanes, _vector_at(builder, ptr, v * W, vsty), align=align)


def _transposed(builder, vecs):
    """The W x W block whose vector r, lane c is ``vecs[r][c]``, as vector c, lane r: each
    round swaps one bit of the vector index with that bit of the lane index, by a
    two-vector shuffle of the vector pair the bit tells apart."""
    mty = ir.VectorType(_I32, W)
    vecs = list(vecs)
    bit = 1
    while bit < W:
        low = ir.Constant(mty, [q if not q & bit else W + (q ^ bit) for q in range(W)])
        high = ir.Constant(mty, [q | bit if not q & bit else W + q for q in range(W)])
        for v in range(W):
            if not v & bit:
                a, b = vecs[v], vecs[v | bit]
                vecs[v] = builder.shuffle_vector(a, b, low)
                vecs[v | bit] = builder.shuffle_vector(a, b, high)
        bit *= 2
    return vecs


def _part_at(builder, n, r, h):
    """Element h*W of row r of rows of n elements (h: a block index, at run time)."""
    return builder.add(builder.mul(n, ir.Constant(n.type, r)),
                       builder.mul(h, ir.Constant(n.type, W)))


def _row_part(builder, ptr, n, r, h, vty):
    """Pointer (to ``vty``) to element h*W of row r of rows of n elements from ``ptr``."""
    return builder.bitcast(builder.gep(ptr, [_part_at(builder, n, r, h)]), vty.as_pointer())


def _tile_vector(builder, tile, n, h, j, cty):
    """Pointer (to ``cty``) to the tile's vector h*W + j."""
    index = builder.add(builder.mul(h, ir.Constant(n.type, W)), j)
    return builder.bitcast(builder.gep(tile, [builder.mul(index, ir.Constant(n.type, W))]),
                           cty.as_pointer())


def _by_blocks(builder, n, block, last_first):
    """``block(h, width)`` over a tile's blocks of W columns, in one loop (so that one
    block's code is compiled): h and its width (W, the last block's 1 .. W) at run time;
    from the first block, or (``last_first``) from the last."""
    one, wide = ir.Constant(n.type, 1), ir.Constant(n.type, W)
    count = builder.sdiv(builder.add(n, ir.Constant(n.type, W - 1)), wide)
    with cgutils.for_range(builder, count) as loop:
        h = builder.sub(builder.sub(count, one), loop.index) if last_first else loop.index
        rest = builder.sub(n, builder.mul(h, wide))
        block(h, builder.select(builder.icmp_signed("<", rest, wide), rest, wide))


def _row_blocks_to_tile(builder, n, ptr, tile, vtys, dtype, keep=None):
    """W rows of n elements (TILE_SHUFFLE_MAX < n <= TILE_TRANSPOSE_MAX) into the tile,
    block by block (see TILE_TRANSPOSE_MAX); ``keep``: a mask's (see ``_tile_rows``)."""
    vsty, cty, align, tile_align = vtys

    def block(h, width):
        valid = _lane_mask(builder, width, types.int64)
        rows = [builder.load(_row_part(builder, ptr, n, r, h, vsty), align=align)
                for r in range(W - 1)]
        last = _row_part(builder, ptr, n, W - 1, h, vsty)
        rows.append(_call(builder, f"llvm.masked.load.{_suffix(vsty)}.p0", [
            last, ir.Constant(_I32, align), valid, ir.Constant(vsty, None)], ret=vsty))
        if keep is not None:
            rows = [keep(_part_at(builder, n, r, h), lanes, None if r < W - 1 else valid)
                    for r, lanes in enumerate(rows)]
        for j, lanes in enumerate(_transposed(builder, rows)):
            at = ir.Constant(n.type, j)
            target = _tile_vector(builder, tile, n, h, at, cty)
            value = _to_compute(builder, lanes, dtype, cty)
            if not j:
                builder.store(value, target, align=tile_align)
                continue
            with builder.if_then(builder.icmp_signed("<", at, width)):
                builder.store(value, target, align=tile_align)

    _by_blocks(builder, n, block, last_first=False)


def _tile_to_row_blocks(builder, n, ptr, tile, vtys, dtype):
    """The inverse of ``_row_blocks_to_tile``. The last block's stores come first: a row's
    stores past its end are then written over by the next row's first block (or, with one
    block, by the next row's store)."""
    vsty, cty, align, tile_align = vtys

    def block(h, width):
        lanes = []
        for j in range(W):
            at = ir.Constant(n.type, j)
            if j:  # past the rows' n: a vector of the tile
                at = builder.select(builder.icmp_signed("<", at, width), at,
                                    ir.Constant(n.type, 0))
            v = builder.load(_tile_vector(builder, tile, n, h, at, cty), align=tile_align)
            lanes.append(v if v.type == vsty else builder.fptrunc(v, vsty))
        rows = _transposed(builder, lanes)
        for r in range(W - 1):
            builder.store(rows[r], _row_part(builder, ptr, n, r, h, vsty), align=align)
        _call(builder, f"llvm.masked.store.{_suffix(vsty)}.p0", [
            rows[W - 1], _row_part(builder, ptr, n, W - 1, h, vsty), ir.Constant(_I32, align),
            _lane_mask(builder, width, types.int64)], ret=ir.VoidType())

    _by_blocks(builder, n, block, last_first=True)


@intrinsic
def vgather_rows(typingctx, rows, index, stride, k, n, tile):
    """W rows of n elements (row stride ``stride``, the first at ``index``) into ``tile``,
    a lane per row in the compute type (``tile[j*W + l]``: element j of row l), by
    contiguous loads and shuffles: True where that form takes them (k the ``ALL``
    marker, C-contiguous rows, stride n, n <= TILE_TRANSPOSE_MAX), else False and nothing
    moved (the caller gathers)."""
    return _tile_rows(rows, index, stride, k, n, tile, _rows_to_tile, store=False)


@intrinsic
def vscatter_rows(typingctx, rows, index, stride, k, n, tile):
    """The inverse of ``vgather_rows``: the tile's lanes stored as W rows of n elements,
    converted to the rows' storage type; True where the shuffled form takes them."""
    return _tile_rows(rows, index, stride, k, n, tile, _tile_to_rows, store=True)


@intrinsic
def vgather_rows_where(typingctx, rows, index, stride, k, n, tile, mask, fill):
    """``vgather_rows`` under a mask: ``mask`` holds a byte per element of the W rows
    (byte 0 for element ``index``; C-contiguous), and an element whose byte is 0 enters
    the tile as ``fill`` (0 or -inf) instead; True where the shuffled form takes them."""
    return _tile_rows(rows, index, stride, k, n, tile, _rows_to_tile, store=False,
                      where=(mask, fill))


@intrinsic
def vscatter_rows_where(typingctx, rows, index, stride, k, n, tile, mask):
    """``vscatter_rows`` under a mask (as ``vgather_rows_where``'s): 0 is stored for an
    element whose byte is 0; True where the shuffled form takes them."""
    return _tile_rows(rows, index, stride, k, n, tile, _tile_to_rows, store=True,
                      where=(mask,))


def _prefetch(builder, arrty, a, index, write, locality):
    """Emit a prefetch of element ``index``'s line of array struct ``a`` (``llvm.prefetch``:
    for writing or reading, cache level by ``locality``; a hint that never faults)."""
    bytes_ptr = ir.IntType(8).as_pointer()  # one declaration for every element type
    ptr = builder.bitcast(_element_ptr(builder, arrty, a, index), bytes_ptr)
    fnty = ir.FunctionType(ir.VoidType(), [bytes_ptr, _I32, _I32, _I32])
    fn = builder.module.declare_intrinsic("llvm.prefetch.p0", fnty=fnty)
    builder.call(fn, [ptr, ir.Constant(_I32, int(write)), ir.Constant(_I32, locality),
                      ir.Constant(_I32, 1)])  # 1: the data cache


@intrinsic
def vprefetch(typingctx, arr, index):
    """A hint that element ``index`` of a 1-D array is read soon: its cache line is
    fetched ahead into the L2 cache (x86 ``prefetcht1``; no effect on any result, even
    past the end). Why L2: ``_lane_kernel.PREFETCH_ROWS``."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1
            and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        index = context.cast(builder, args[1], sig.args[1], types.intp)
        _prefetch(builder, sig.args[0], a, index, False, 2)
        return context.get_dummy_value()

    return types.none(arr, index), codegen


def _span_fetch(write):
    """An intrinsic (arr, lo, hi): elements lo..hi-1 (hi past lo) of a 1-D array fetched
    into the L1 cache, each of their lines once: for writing (x86 ``prefetchw``: the
    stores that follow then find their lines owned) or reading (``prefetcht0``). Emitted as
    IR (a loop over the lines): compiled in no time, where numba loops around single
    prefetches made a first call ~0.2 s longer."""
    def typer(typingctx, arr, lo, hi):
        if not (isinstance(arr, types.Array) and arr.ndim == 1
                and isinstance(lo, types.Integer) and isinstance(hi, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            arrty = sig.args[0]
            a = context.make_array(arrty)(context, builder, args[0])
            lo, hi = (context.cast(builder, v, t, types.intp)
                      for v, t in zip(args[1:], sig.args[1:], strict=True))
            line = ir.Constant(_I64, STREAM_ALIGN * 8 // arrty.dtype.bitwidth)  # elements
            with cgutils.for_range_slice(builder, lo, hi, line, _I64) as (index, _):
                _prefetch(builder, arrty, a, index, write, 3)
            # the last line, which the steps from an unaligned lo pass over
            _prefetch(builder, arrty, a, builder.sub(hi, ir.Constant(_I64, 1)), write, 3)
            return context.get_dummy_value()

        return types.none(arr, lo, hi), codegen
    return typer


fetch_read = intrinsic(_span_fetch(False))
fetch_write = intrinsic(_span_fetch(True))


@intrinsic
def vload_mask(typingctx, arr, index, k):
    """Lanes < k of a 1-D byte array (a numpy bool mask viewed as uint8) as a lane mask:
    set where the byte is not 0; lanes from k on are not set."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.uint8
            and isinstance(k, (types.Integer, MarkerType))):
        return None

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        vty = ir.VectorType(ir.IntType(8), W)
        lanes = _lane_mask(builder, args[2], sig.args[2])
        zero = ir.Constant(vty, None)
        if sig.args[0].layout in "CF":
            vp = builder.bitcast(builder.gep(a.data, [args[1]]), vty.as_pointer())
            raw = _call(builder, f"llvm.masked.load.{_suffix(vty)}.p0",
                        [vp, ir.Constant(_I32, 1), lanes, zero], ret=vty)
        else:
            stride = cgutils.unpack_tuple(builder, a.strides, 1)[0]
            offs = builder.add(_splat(builder, args[1]),
                               ir.Constant(ir.VectorType(_I64, W), list(range(W))))
            base = builder.ptrtoint(a.data, _I64)
            addrs = builder.add(_splat(builder, base), builder.mul(offs, _splat(builder, stride)))
            ptrs = builder.inttoptr(addrs, ir.VectorType(ir.IntType(8).as_pointer(), W))
            raw = _call(builder, f"llvm.masked.gather.{_suffix(vty)}.v{W}p0",
                        [ptrs, ir.Constant(_I32, 1), lanes, zero], ret=vty)
        return builder.and_(builder.icmp_unsigned("!=", raw, zero), lanes)

    return MASK(arr, index, k), codegen


@intrinsic
def vand(typingctx, a, b):
    """Lane-wise and of two lane masks."""
    if a != MASK or b != MASK:
        return None
    return MASK(a, b), lambda context, builder, sig, args: builder.and_(*args)


# ---------------------------------------------------------------------------------------
# views

def emit_view(context, builder, arrty, arr, lo, hi):
    """IR of ``arr[lo:hi]`` for a 1-D array of type ``arrty`` (lo, hi: intp values,
    0 <= lo <= hi <= len(arr), not checked), sharing its memory without reference counts."""
    src = context.make_array(arrty)(context, builder, arr)
    dst = context.make_array(arrty)(context, builder)
    (stride,) = cgutils.unpack_tuple(builder, src.strides, 1)
    base = builder.ptrtoint(src.data, _I64)
    data = builder.inttoptr(builder.add(base, builder.mul(lo, stride)), src.data.type)
    context.populate_array(dst, data=data, shape=[builder.sub(hi, lo)], strides=[stride],
                           itemsize=src.itemsize, meminfo=src.meminfo, parent=src.parent)
    return impl_ret_borrowed(context, builder, arrty, dst._getvalue())


@intrinsic
def empty(typingctx, shape, dtype):
    """``np.empty(shape, dtype)`` in compiled code: ``shape`` an integer or a tuple of
    integers (not negative, not checked), ``dtype`` a numpy scalar type. numba's own
    ``np.empty`` calls a compiled function of its module ``numba.np.arrayobj``, and a
    process that loads its callers' code from the disk cache imports that module first
    (~30 ms of a warm start's ~300 ms); this one asks numba's runtime for the memory in
    the caller's own code."""
    if isinstance(shape, types.Integer):
        ndim = 1
    elif isinstance(shape, types.UniTuple) and isinstance(shape.dtype, types.Integer):
        ndim = shape.count
    else:
        return None
    if not isinstance(dtype, types.NumberClass):
        return None
    arrty = types.Array(dtype.instance_type, ndim, "C")

    def codegen(context, builder, sig, args):
        if isinstance(shape, types.Integer):
            dims = [context.cast(builder, args[0], shape, types.intp)]
        else:
            dims = [context.cast(builder, v, shape.dtype, types.intp)
                    for v in cgutils.unpack_tuple(builder, args[0], ndim)]
        data_type = context.get_data_type(arrty.dtype)
        item = context.get_constant(types.intp, context.get_abi_sizeof(data_type))
        strides = [item]  # C order
        for d in reversed(dims[1:]):
            strides.insert(0, builder.mul(strides[0], d))
        meminfo = context.nrt.meminfo_alloc_aligned(
            builder, builder.mul(strides[0], dims[0]),
            context.get_preferred_array_alignment(arrty.dtype))
        ary = context.make_array(arrty)(context, builder)
        context.populate_array(ary, data=builder.bitcast(context.nrt.meminfo_data(
            builder, meminfo), data_type.as_pointer()), shape=dims, strides=strides,
            itemsize=item, meminfo=meminfo)
        return impl_ret_new_ref(context, builder, arrty, ary._getvalue())

    return arrty(shape, dtype), codegen


@intrinsic
def stack_empty(typingctx, like, size):
    """An uninitialized 1-D C array of ``size`` elements (an integer constant) of the
    compute type of array ``like``, on the stack of the compiled function that calls it:
    scratch with no allocation (which a parallel task of a few rows pays per call), valid
    until that function returns."""
    if not (isinstance(like, types.Array) and isinstance(size, types.IntegerLiteral)):
        return None
    ctype = compute_type(like.dtype)
    if ctype is None:
        return None
    arrty = types.Array(ctype, 1, "C")
    count = size.literal_value

    def codegen(context, builder, sig, args):
        data_type = context.get_data_type(ctype)
        data = cgutils.alloca_once(builder, data_type, size=count)
        item = context.get_constant(types.intp, context.get_abi_sizeof(data_type))
        ary = context.make_array(arrty)(context, builder)
        context.populate_array(ary, data=data, shape=[context.get_constant(types.intp, count)],
                               strides=[item], itemsize=item, meminfo=None)
        return ary._getvalue()

    return arrty(like, size), codegen


@intrinsic
def seg(typingctx, arr, lo, hi):
    """``arr[lo:hi]`` of a 1-D array (0 <= lo <= hi <= len(arr), not checked), or None for
    None. An intrinsic because numba refuses functions compiled without reference counting
    that return an array they did not receive."""
    if isinstance(arr, types.NoneType):
        return types.none(arr, lo, hi), lambda c, b, s, a: c.get_dummy_value()
    if not (isinstance(arr, types.Array) and arr.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        lo_, hi_ = (context.cast(builder, v, t, types.intp)
                    for v, t in zip(args[1:], sig.args[1:], strict=True))
        return emit_view(context, builder, arr, args[0], lo_, hi_)

    return arr(arr, lo, hi), codegen


# ---------------------------------------------------------------------------------------
# streaming stores: a row's outputs written past the caches (non-temporal stores). A store
# to a line not in the cache first reads the line from memory ("read for ownership"); a
# whole-line non-temporal store does not, so a write pass costs one stream of memory
# traffic instead of two. Only for outputs too large to be read back from the cache, and
# only for whole aligned lines (a partial line written this way is a slow partial write).

STREAM_ALIGN = 64  # bytes: a cache line


@intrinsic
def stream_head(typingctx, arr):
    """Elements of a contiguous 1-D array before its first cache-line-aligned element, or
    -1 where no element is aligned (an address not a multiple of the item size, or an
    array of any layout, whose elements may not be consecutive)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        if sig.args[0].layout not in "CF":
            return ir.Constant(_I64, -1)
        a = context.make_array(sig.args[0])(context, builder, args[0])
        size = sig.args[0].dtype.bitwidth // 8
        addr = builder.ptrtoint(a.data, _I64)
        gap = builder.and_(builder.sub(ir.Constant(_I64, 0), addr),
                           ir.Constant(_I64, STREAM_ALIGN - 1))
        odd = builder.icmp_unsigned("!=", builder.urem(addr, ir.Constant(_I64, size)),
                                    ir.Constant(_I64, 0))
        return builder.select(odd, ir.Constant(_I64, -1),
                              builder.udiv(gap, ir.Constant(_I64, size)))

    return types.intp(arr), codegen


@intrinsic
def vstream(typingctx, arr, index, value):
    """Store all W lanes at ``index ..`` bypassing the caches (a non-temporal store): the
    element's address must be cache-line aligned. Followed by ``vfence`` before another
    thread reads the memory."""
    if not _check_store(arr, value):
        return None

    def codegen(context, builder, sig, args):
        arrty = sig.args[0]
        a = context.make_array(arrty)(context, builder, args[0])
        vsty = ir.VectorType(_storage_ir(context, arrty.dtype), W)
        v = args[2]
        if v.type != vsty:
            v = builder.fptrunc(v, vsty)
        ptr = builder.bitcast(_element_ptr(builder, arrty, a, args[1]), vsty.as_pointer())
        st = builder.store(v, ptr, align=min(STREAM_ALIGN, W * arrty.dtype.bitwidth // 8))
        st.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(_I32, 1)]))
        return context.get_dummy_value()

    return types.none(arr, index, value), codegen


@intrinsic
def vfence(typingctx):
    """A full memory fence: the non-temporal stores before it are visible to every thread
    before any later access (they are weakly ordered; an mfence on x86)."""
    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.none(), codegen
