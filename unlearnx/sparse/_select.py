"""Exact top-k selection and exact drop counts, in time linear in the tensor size (private).

**Selection.** Scores become uint32 keys whose unsigned order is the scores' order: a float32's bit
pattern with the sign bit set when it is non-negative, inverted when it is negative (−0 counts as +0, and
NaN ranks below −inf, as in a sort); 8-, 16- and 32-bit integers are offset into the unsigned range. The
count-th largest key t is built bit by bit from the top — 32 passes of "how many keys are ≥ this
candidate?" — and the entries equal to t are resolved by position (lower flat index first) with a second
bisection on the index, run only when t is tied. Every pass is one linear reduction, so a selection costs
about 32–64 passes over the keys where a sort costs O(N log N) with poor locality. The result is the same
mask as a stable descending sort (``tests/sparse/test_masks.py`` checks it bit for bit). 64-bit
scores (with ``jax_enable_x64``) keep the sort.

**Drop counts.** ⌈p·n⌉ for a fraction p and an active count n is what Python's ``math.ceil(p * n)`` gives
for the float64 value of p: the float64 product, rounded to nearest, then the ceiling. It is computed
exactly in 16-bit limbs held in uint32, so it needs no float64 on the device: with p = P/2^S (P < 2^53), the
exact product X = P·n is rounded to 53 significant bits by subtracting half an ulp, 2^(bitlen(X) − 54),
before the ceiling of X/2^S (a product that lands exactly half an ulp above an integer rounds to that even
integer, as IEEE rounding does). A float32 cast of p and of the product would be off by one on layers of a
few million weights.
"""

from __future__ import annotations

import fractions

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_LIMBS = 6  # 96 bits: a 53-bit fraction times a 31-bit count
_MASK16 = 0xFFFF


# ---------------------------------------------------------------------------------------------------------
# Selection.


def order_keys(scores: jax.Array) -> jax.Array | None:
    """Flat uint32 keys ordered as the scores, or ``None`` for a 64-bit dtype (use :func:`sorted_top`)."""
    dtype = jnp.result_type(scores)
    flat = jnp.ravel(scores)
    if jnp.dtype(dtype).itemsize > 4:
        return None
    if jnp.issubdtype(dtype, jnp.floating):
        values = flat.astype(jnp.float32)
        values = jnp.where(values == 0, jnp.zeros_like(values), values)  # −0 ties with +0
        bits = lax.bitcast_convert_type(values, jnp.uint32)
        keys = jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))
        return jnp.where(jnp.isnan(values), jnp.uint32(0), keys)  # NaN last, as argsort puts it
    if jnp.issubdtype(dtype, jnp.unsignedinteger):
        return flat.astype(jnp.uint32)
    return lax.bitcast_convert_type(flat.astype(jnp.int32), jnp.uint32) ^ jnp.uint32(0x80000000)


_EXACT_F32 = 1 << 24  # float32 sums of 0/1 stay exact below this many terms


def count(flags: jax.Array) -> jax.Array:
    """The number of true entries of a flat bool array, as int32.

    Summed as float32 in chunks of 2^24 (exact: every partial sum is an integer ≤ 2^24), because XLA:CPU
    splits an int32 sum into a chain of reduce-windows over a materialised int32 copy (4 operations and an
    extra pass), while a float32 sum stays one fused reduction.
    """
    size = flags.size
    if size <= _EXACT_F32:
        return jnp.sum(flags.astype(jnp.float32)).astype(jnp.int32)
    chunks = -(-size // _EXACT_F32)
    padded = jnp.pad(flags, (0, chunks * _EXACT_F32 - size)).reshape(chunks, _EXACT_F32)
    return jnp.sum(jnp.sum(padded.astype(jnp.float32), axis=1).astype(jnp.int32))


@jax.jit  # compiled once per key shapes, the counts traced (eager callers: initial masks, tests)
def top_many(keys: list[jax.Array], counts: jax.Array) -> list[jax.Array]:
    """Bool masks over flat ``keys[l]`` keeping the ``counts[l]`` largest of each (ties: lower index first).

    All tensors share one loop of passes (each pass reduces every tensor once), and the loops are
    ``fori_loop``s, not unrolled: on XLA:CPU a ``lax.cond`` pays on every call for each operation inside
    its branches, taken or not, so a mask update must stay a few dozen operations.
    """
    counts = jnp.asarray(counts, jnp.int32).reshape(len(keys))
    sizes = jnp.asarray([k.size for k in keys], jnp.int32)

    def value_bit(i, carry):
        # t: the largest key with #{key ≥ t} ≥ count (the count-th largest), built from the top bit. The
        # last failed candidate is t + 1 (the bits below it all succeeded), so its total is #{key > t}; the
        # last successful one's is #{key ≥ t}. Both come out of the loop: no further pass needed.
        thresholds, at_least, above = carry
        candidates = thresholds | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        totals = jnp.stack([count(k >= candidates[j]) for j, k in enumerate(keys)])
        enough = totals >= counts
        return (
            jnp.where(enough, candidates, thresholds),
            jnp.where(enough, totals, at_least),
            jnp.where(enough, above, totals),
        )

    start = (jnp.zeros(len(keys), jnp.uint32), sizes, jnp.zeros(len(keys), jnp.int32))
    thresholds, at_least, above = lax.fori_loop(0, 32, value_bit, start)
    need = counts - above  # how many entries equal to t to keep, lowest index first
    all_tied = need >= at_least - above  # the usual case: keep them all, no bisection on the index
    bits = max(max(k.size - 1, 1).bit_length() for k in keys)

    def index_bit(i, lasts):  # the largest m with #{tied index < m} < need: the need-th tied index
        candidates = lasts | (jnp.int32(1) << (bits - 1 - i))
        counted = jnp.stack(
            [
                count((k == thresholds[j]) & (lax.iota(jnp.int32, k.size) < candidates[j]))
                for j, k in enumerate(keys)
            ]
        )
        return jnp.where(counted < need, candidates, lasts)

    passes = jnp.where(jnp.all(all_tied), 0, bits)
    lasts = lax.fori_loop(0, passes, index_bit, jnp.zeros(len(keys), jnp.int32))
    lasts = jnp.where(all_tied, sizes, lasts)
    return [
        (k > thresholds[i])
        | ((k == thresholds[i]) & (lax.iota(jnp.int32, k.size) <= lasts[i]) & (need[i] > 0))
        for i, k in enumerate(keys)
    ]


def top_from_keys(keys: jax.Array, count) -> jax.Array:
    """Bool mask over flat ``keys`` keeping the ``count`` largest (ties: lower index first)."""
    return top_many([keys], jnp.reshape(jnp.asarray(count, jnp.int32), (1,)))[0]


def sorted_top(scores: jax.Array, count) -> jax.Array:
    """The same mask by a stable descending sort (64-bit scores; a reference for the tests)."""
    flat = jnp.ravel(scores)
    order = jnp.argsort(-flat, stable=True)
    ranks = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return ranks < count


def top_flat(scores: jax.Array, count) -> jax.Array:
    """Flat bool mask keeping the ``count`` largest ``scores`` (ties: lower index first)."""
    keys = order_keys(scores)
    return sorted_top(scores, count) if keys is None else top_from_keys(keys, count)


# ---------------------------------------------------------------------------------------------------------
# Exact drop counts.


def split_fraction(value: float) -> tuple[tuple[int, ...], int]:
    """A Python float p ≥ 0 as (16-bit limbs of P, S) with p = P/2^S exactly, P < 2^53."""
    if value == 0:
        return (0, 0, 0, 0), 0
    numerator, denominator = fractions.Fraction(value).as_integer_ratio()
    shift = denominator.bit_length() - 1  # a float's denominator is a power of two
    limbs = tuple((numerator >> (16 * i)) & _MASK16 for i in range(4))
    return limbs, shift


def fraction_table(values) -> tuple[np.ndarray, np.ndarray]:
    """Stacked :func:`split_fraction` of Python floats: uint32 limbs [E, 4] and int32 shifts [E]."""
    pairs = [split_fraction(float(v)) for v in values]
    return np.asarray([p[0] for p in pairs], np.uint32), np.asarray([p[1] for p in pairs], np.int32)


def split_traced(fraction: jax.Array) -> tuple[list[jax.Array], jax.Array]:
    """:func:`split_fraction` of a (traced) float scalar, exactly, from its bit pattern."""
    value = jnp.asarray(fraction)
    if jnp.dtype(value.dtype).itemsize > 4:  # float64 (x64): 52 stored bits, bias 1023
        bits = lax.bitcast_convert_type(value.astype(jnp.float64), jnp.uint64)
        exponent = ((bits >> 52) & 0x7FF).astype(jnp.int32)
        mantissa = (bits & ((1 << 52) - 1)) | jnp.where(exponent > 0, jnp.uint64(1 << 52), jnp.uint64(0))
        limbs = [((mantissa >> (16 * i)) & _MASK16).astype(jnp.uint32) for i in range(4)]
        return limbs, 1075 - jnp.maximum(exponent, 1)
    bits = lax.bitcast_convert_type(value.astype(jnp.float32), jnp.uint32)
    exponent = ((bits >> 23) & 0xFF).astype(jnp.int32)
    mantissa = (bits & 0x7FFFFF) | jnp.where(exponent > 0, jnp.uint32(1 << 23), jnp.uint32(0))
    limbs = [mantissa & _MASK16, mantissa >> 16, jnp.uint32(0), jnp.uint32(0)]
    return limbs, 150 - jnp.maximum(exponent, 1)


def _limb(limbs: list[jax.Array], index: jax.Array) -> jax.Array:
    """limbs[index] for a traced index; 0 outside the number."""
    out = jnp.uint32(0)
    for i, limb in enumerate(limbs):
        out = jnp.where(index == i, limb, out)
    return out


def ceil_times(limbs, shift, n) -> jax.Array:
    """``math.ceil(p * n)`` in Python float64 for p = P/2^S given as (limbs of P, S) and an int32 n ≥ 0."""
    n = jnp.asarray(n).astype(jnp.uint32)
    p = [jnp.asarray(limb, jnp.uint32) for limb in limbs]
    shift = jnp.asarray(shift, jnp.int32)
    # X = P·n in 16-bit limbs (each partial product < 2^32; the sums stay below 2^19 before carries).
    acc = [jnp.uint32(0)] * (_LIMBS + 1)
    for i, pi in enumerate(p):
        for j, nj in enumerate((n & _MASK16, n >> 16)):
            product = pi * nj
            acc[i + j] = acc[i + j] + (product & _MASK16)
            acc[i + j + 1] = acc[i + j + 1] + (product >> 16)
    x, carry = [], jnp.uint32(0)
    for value in acc[:_LIMBS]:
        value = value + carry
        x.append(value & _MASK16)
        carry = value >> 16
    # Round to 53 significant bits as float64 does: subtract half an ulp, 2^(bitlen(X) − 54), if X has more.
    length = jnp.int32(0)
    for i, limb in enumerate(x):
        length = jnp.where(limb > 0, 16 * i + 32 - lax.clz(limb).astype(jnp.int32), length)
    half_ulp = length - 54
    borrow = jnp.int32(0)
    for i in range(_LIMBS):
        take = (half_ulp >= 0) & (half_ulp // 16 == i)
        sub = jnp.where(take, jnp.int32(1) << jnp.clip(half_ulp - 16 * i, 0, 15), 0)
        value = x[i].astype(jnp.int32) - sub - borrow
        borrow = (value < 0).astype(jnp.int32)
        x[i] = (value + borrow * 65536).astype(jnp.uint32)
    # Ceiling of X / 2^S: two 16-bit limbs of the quotient (it is at most n < 2^31), plus a non-zero rest.
    quotient = jnp.int32(0)
    for j in range(2):
        start = shift + 16 * j
        low, offset = start // 16, (start % 16).astype(jnp.uint32)
        piece = (_limb(x, low) >> offset) | ((_limb(x, low + 1) << (16 - offset)) & _MASK16)
        quotient = quotient + (piece.astype(jnp.int32) << (16 * j))
    rest = jnp.bool_(False)
    for i, limb in enumerate(x):
        below = jnp.clip(shift - 16 * i, 0, 16)
        rest = rest | ((limb & ((jnp.uint32(1) << below.astype(jnp.uint32)) - 1)) != 0)
    return quotient + rest.astype(jnp.int32)


def ceil_fraction_times(fraction, n) -> jax.Array:
    """``math.ceil(fraction * n)`` for a Python or traced float fraction in [0, 1] and int32 counts n ≥ 0."""
    if isinstance(fraction, int | float | np.floating | np.integer):
        limbs, shift = split_fraction(float(fraction))
    else:
        limbs, shift = split_traced(fraction)
    return ceil_times(limbs, shift, n)
