"""Structured per-example squares: the exact empirical Fisher diagonal at about the cost of a batch gradient.

For a parameter W used once per example as y = dot(x, W) the per-example gradient is the product
gᵢ = xᵢ ⊗ δᵢ of the layer input and the output gradient δᵢ = ∂ℓᵢ/∂y, so

    Σᵢ wᵢ gᵢ² = (x ∘ x)ᵀ ((w δ) ∘ δ)          (one matmul, no per-example gradient materialised)

whenever every entry of gᵢ is a single product, i.e. when the per-example input has no dimension that is
neither contracted with W nor a dot batch dimension (a dense layer on a [1, d] example: yes; on a [1, T, d]
sequence: no, because gᵢ = Σₜ xᵢₜ ⊗ δᵢₜ sums over positions before squaring). For a row lookup
y = W[r] (an embedding) gᵢ[v] = Σ_{t: rᵢₜ = v} δᵢₜ; the positions of each example are grouped by row
(a sort of the B·T (example, row) pairs), summed, squared and scatter-added, which is exact for repeated
tokens too. For a convolution kernel gᵢ[k] = Σₚ x̃ᵢ[p·s + k·r] ⊗ δᵢ[p] (x̃ the zero-padded input, s the
strides, r the kernel dilation) sums over output positions p, so it is formed per example, one kernel offset k
at a time (a batched matmul: B × C_in × C_out floats at once instead of B × |θ|), squared and summed, rather
than by ``vmap`` of the whole gradient, which XLA runs as a slow per-example grouped convolution. Every other
parameter (biases, normalisation scales, dense layers applied at many positions, parameters used twice)
keeps its exact per-example gradient from ``vmap`` of the per-example gradient restricted to those leaves
(for a bias that is the per-example sum of δ, cheap).

How the structure is found: a jaxpr pattern match (as kfac-jax's graph matcher, written anew here). The loss
of ONE example, ``loss_fn(params, example[None])[0]``, is traced to a jaxpr; calls (``jit``) are inlined;
each parameter leaf is followed through element-preserving reshapes, transposes and size-preserving
broadcasts to the operations that consume it. A leaf is structured when its only consumer is one of the
float32 operations matched: ``dot_general`` meeting the single-product condition, ``conv_general_dilated``
on its kernel operand (one feature group, no input dilation, non-negative padding) or a row ``gather``
(``jnp.take(W, ids, axis=0)``, ``W[ids]``). The jaxpr is then re-evaluated by a small interpreter that
adds a zero perturbation p to the output of each matched operation and records its other operand; ``vmap``
over examples of ``grad`` with respect to p yields δ for every example (the standard trick), with the batch
axis known to be axis 0 because ``vmap`` put it there.

We chose this over Flax interception (Linen ``intercept_methods``, an NNX wrapper) because
``fisher.diagonal`` sees only ``loss_fn(params, batch)`` over any pytree: the jaxpr is the same for Linen
dicts, NNX ``State`` and plain dicts, for NNX models behind the ``unlearnx.models`` bridge and for
hand-written losses, and it cannot miss a use of a parameter outside a tagged layer (every use is visible,
so any unrecognised use sends the leaf to the exact fallback). kfac-jax itself was not used: its patterns
target curvature blocks rather than exact per-example squares, and it would be a heavy dependency for one
function.

The module is private; ``unlearnx.fisher.diagonal(..., estimator="empirical")`` uses it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from unlearnx._typing import PyTree

_CALLS = frozenset({"jit", "pjit", "closed_call"})
_ELEMENT_PRESERVING = frozenset({"reshape", "transpose", "squeeze", "broadcast_in_dim", "copy", "copy_p"})
_ROW_GATHER_MODES = (
    jax.lax.GatherScatterMode.FILL_OR_DROP,
    jax.lax.GatherScatterMode.CLIP,
    jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS,
)


@dataclasses.dataclass(frozen=True, eq=False)
class Site:
    """One structured use of a parameter leaf: equation ``index`` (in inlined traversal order) of kind
    ``"dense"`` (``dot_general``, the leaf at operand ``position``), ``"conv"`` (a convolution kernel) or
    ``"embed"`` (row ``gather``)."""

    kind: str
    index: int
    position: int
    primitive: Any
    params: dict
    chain: tuple  # (primitive, params) pairs applied to the leaf before the operation
    operand: jax.ShapeDtypeStruct  # the leaf as the operation sees it


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """The per-example jaxpr and, per leaf index, its structured site, or membership of ``fallback`` (needs
    per-example gradients) or ``unused`` (no use: a zero gradient)."""

    jaxpr: jcore.ClosedJaxpr
    sites: dict[int, Site]
    fallback: tuple[int, ...]
    unused: tuple[int, ...]
    perturbations: dict[int, jax.ShapeDtypeStruct]


def _is_f32(aval: Any) -> bool:
    return getattr(aval, "dtype", None) == jnp.float32


def _element_preserving(eqn: Any) -> bool:
    if eqn.primitive.name not in _ELEMENT_PRESERVING or len(eqn.invars) != 1:
        return False
    (var,) = eqn.invars
    out = eqn.outvars[0].aval
    return out.dtype == var.aval.dtype and math.prod(out.shape) == math.prod(var.aval.shape)


def _match(eqn: Any, position: int) -> str | None:
    """``"dense"``, ``"conv"`` or ``"embed"`` when the parameter at operand ``position`` of ``eqn`` is used
    structurally, else ``None``."""
    avals = [getattr(v, "aval", None) for v in eqn.invars]
    name = eqn.primitive.name
    if name == "dot_general" and len(avals) == 2 and all(map(_is_f32, avals + [eqn.outvars[0].aval])):
        (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
        kept = (rhs_contract, rhs_batch) if position == 0 else (lhs_contract, lhs_batch)
        other = avals[1 - position].shape
        free = [other[d] for d in range(len(other)) if d not in kept[0] and d not in kept[1]]
        return "dense" if math.prod(free) == 1 else None
    if name == "conv_general_dilated" and position == 1 and all(map(_is_f32, avals + [eqn.outvars[0].aval])):
        params = eqn.params
        plain = params["feature_group_count"] == 1 and params["batch_group_count"] == 1
        plain = plain and set(params["lhs_dilation"]) == {1} and isinstance(params["padding"], tuple | list)
        return "conv" if plain and all(lo >= 0 and hi >= 0 for lo, hi in params["padding"]) else None
    if name == "gather" and position == 0 and _is_f32(avals[0]) and avals[0].ndim == 2:
        numbers, indices = eqn.params["dimension_numbers"], avals[1]
        row_lookup = (
            numbers.offset_dims == (indices.ndim - 1,)
            and numbers.collapsed_slice_dims == (0,)
            and numbers.start_index_map == (0,)
            and not numbers.operand_batching_dims
            and not numbers.start_indices_batching_dims
            and tuple(eqn.params["slice_sizes"]) == (1, avals[0].shape[1])
            and indices.shape[-1] == 1
            and eqn.params["mode"] in _ROW_GATHER_MODES
        )
        return "embed" if row_lookup else None
    return None


class _Analysis:
    """Follows every parameter leaf through the (inlined) jaxpr and records each of its uses."""

    def __init__(self) -> None:
        self.counter = 0
        self.uses: dict[int, list] = {}
        self.perturbations: dict[int, jax.ShapeDtypeStruct] = {}

    def use(self, leaf: int, site: Site | None) -> None:
        self.uses.setdefault(leaf, []).append(site)

    def run(self, jaxpr: Any, env: dict) -> list:
        """``env`` maps a variable to ``(leaf, chain)``; returns the same for the jaxpr's outputs."""
        for eqn in jaxpr.eqns:
            index = self.counter
            self.counter += 1
            infos = [None if isinstance(v, jcore.Literal) else env.get(v) for v in eqn.invars]
            if eqn.primitive.name in _CALLS:
                inner = eqn.params["jaxpr"].jaxpr
                inner_env = {v: info for v, info in zip(inner.invars, infos, strict=True) if info}
                outs = self.run(inner, inner_env)
                env.update({v: info for v, info in zip(eqn.outvars, outs, strict=True) if info})
                continue
            if infos and infos[0] and _element_preserving(eqn):
                leaf, chain = infos[0]
                env[eqn.outvars[0]] = (leaf, (*chain, (eqn.primitive, dict(eqn.params))))
                continue
            for position, info in enumerate(infos):
                if info is None:
                    continue
                kind = _match(eqn, position)
                site = None
                if kind is not None:
                    operand = eqn.invars[position].aval
                    site = Site(
                        kind,
                        index,
                        position,
                        eqn.primitive,
                        dict(eqn.params),
                        info[1],
                        jax.ShapeDtypeStruct(operand.shape, operand.dtype),
                    )
                    out = eqn.outvars[0].aval
                    self.perturbations[index] = jax.ShapeDtypeStruct(out.shape, out.dtype)
                self.use(info[0], site)
        return [None if isinstance(v, jcore.Literal) else env.get(v) for v in jaxpr.outvars]


def _single_example_loss(loss_fn: Callable, params_def: Any, example_def: Any) -> Callable:
    def single(param_leaves, example_leaves):
        params = jax.tree.unflatten(params_def, param_leaves)
        example = jax.tree.unflatten(example_def, example_leaves)
        return loss_fn(params, jax.tree.map(lambda a: a[None], example))[0]

    return single


def analyse(loss_fn: Callable, params: PyTree, example: PyTree) -> Plan | None:
    """The structured plan of ``loss_fn`` for one ``example`` (leaves without the batch axis; shapes and
    dtypes only are read), or ``None`` when no leaf is structured or the loss cannot be traced alone."""
    param_leaves, params_def = jax.tree.flatten(params)
    example_leaves, example_def = jax.tree.flatten(example)
    try:
        # The values themselves (not shape structs) so that inside shard_map the jaxpr is typed with their
        # varying manual axes and carries the pvary casts that binding its equations again needs.
        closed = jax.make_jaxpr(_single_example_loss(loss_fn, params_def, example_def))(
            param_leaves, example_leaves
        )
    except Exception:  # noqa: BLE001 -- anything untraceable alone falls back to the exact vmap path
        return None
    analysis = _Analysis()
    jaxpr = closed.jaxpr
    env = {v: (i, ()) for i, v in enumerate(jaxpr.invars[: len(param_leaves)])}
    for info in analysis.run(jaxpr, env):
        if info:  # a parameter returned as the loss: not a structured use
            analysis.use(info[0], None)
    sites, fallback, unused = {}, [], []
    for leaf in range(len(param_leaves)):
        uses = analysis.uses.get(leaf, [])
        if not uses:
            unused.append(leaf)
        elif len(uses) == 1 and uses[0] is not None and jnp.result_type(param_leaves[leaf]) == jnp.float32:
            sites[leaf] = uses[0]
        else:
            fallback.append(leaf)
    if not sites:
        return None
    needed = {site.index for site in sites.values()}
    perturbations = {k: v for k, v in analysis.perturbations.items() if k in needed}
    return Plan(closed, sites, tuple(fallback), tuple(unused), perturbations)


def _interpret(jaxpr: Any, consts: list, args: list, hook: Callable, counter: list) -> list:
    """Evaluates ``jaxpr`` with calls inlined; ``hook(index, invals, outs)`` may replace any output."""
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        index = counter[0]
        counter[0] += 1
        invals = [read(v) for v in eqn.invars]
        if eqn.primitive.name in _CALLS:
            inner = eqn.params["jaxpr"]
            outs = _interpret(inner.jaxpr, list(inner.consts), invals, hook, counter)
        else:
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            outs = list(outs) if eqn.primitive.multiple_results else [outs]
            outs = hook(index, invals, outs)
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _example_pass(plan: Plan, leaves: list, example_leaves: list, cast: Callable) -> tuple:
    """For one example: δ at every perturbed output, the gradients of the fallback leaves, the loss and the
    recorded operands (inputs of dense sites, row ids of embedding sites)."""

    def loss(perturbations, fallback_leaves):
        full = list(leaves)
        for leaf, value in zip(plan.fallback, fallback_leaves, strict=True):
            full[leaf] = value
        recorded = {}

        def hook(index, invals, outs):
            if index not in perturbations:
                return outs
            for site in plan.sites.values():
                if site.index == index:
                    recorded[(index, site.position)] = invals[1 - site.position]
            return [outs[0] + perturbations[index], *outs[1:]]

        (value,) = _interpret(plan.jaxpr.jaxpr, list(plan.jaxpr.consts), full + example_leaves, hook, [0])
        return value, (value, recorded)

    zeros = {k: cast(jnp.zeros(s.shape, s.dtype)) for k, s in plan.perturbations.items()}
    fallback_leaves = [leaves[i] for i in plan.fallback]
    (deltas, grads), (value, recorded) = jax.grad(loss, argnums=(0, 1), has_aux=True)(zeros, fallback_leaves)
    return deltas, grads, value, recorded


def _transpose(forward: Callable, spec: jax.ShapeDtypeStruct, cotangent: jax.Array, cast: Callable):
    """The transpose of the linear ``forward`` at ``cotangent``. A ``vjp`` at a zero marked per-device
    rather than ``linear_transpose`` of an abstract (device-invariant) input, whose transpose inside
    ``shard_map`` would all-reduce; XLA drops the unused forward value."""
    _, pullback = jax.vjp(forward, cast(jnp.zeros(spec.shape, spec.dtype)))
    return pullback(cotangent)[0]


def _dense_squares(site: Site, inputs: jax.Array, deltas: jax.Array, weights: jax.Array, cast) -> jax.Array:
    """Σᵢ wᵢ gᵢ² for gᵢ = the ``dot_general`` transpose of (xᵢ, δᵢ): the transpose of (x², w δ²)."""
    squared_inputs = jnp.square(inputs)
    weighted = jnp.square(deltas) * weights.reshape((-1,) + (1,) * (deltas.ndim - 1))
    params = site.primitive.get_bind_params(site.params)

    def forward(operand):
        def one(x):
            pair = (operand, x) if site.position == 0 else (x, operand)
            return site.primitive.bind(*pair, **params)

        return jax.vmap(one)(squared_inputs)

    return _transpose(forward, site.operand, weighted, cast)


def _conv_squares(site: Site, inputs: jax.Array, deltas: jax.Array, weights: jax.Array, cast) -> jax.Array:
    """Σᵢ wᵢ gᵢ² for a convolution kernel, one kernel offset k at a time: gᵢ[k] = Σₚ x̃ᵢ[p·s + k·r] ⊗ δᵢ[p]
    (x̃ the zero-padded input, s the strides, r the kernel dilation) as a per-example matmul over the output
    positions p, squared and summed over examples (B × C_in × C_out floats live per offset)."""
    params = site.params
    numbers = params["dimension_numbers"]
    x = jnp.transpose(inputs, (0, *(d + 1 for d in numbers.lhs_spec)))  # [B, N, C, spatial...]
    delta = jnp.transpose(deltas, (0, *(d + 1 for d in numbers.out_spec)))  # [B, N, O, positions...]
    x = jnp.pad(x, [(0, 0)] * 3 + [tuple(pair) for pair in params["padding"]])
    kernel_spatial = [site.operand.shape[d] for d in numbers.rhs_spec[2:]]
    positions = delta.shape[3:]
    blocks = []
    for offset in itertools.product(*map(range, kernel_spatial)):
        steps = zip(offset, params["rhs_dilation"], positions, params["window_strides"], strict=True)
        window = tuple(slice(k * r, k * r + (p - 1) * s + 1, s) for k, r, p, s in steps)
        per_example = jnp.einsum(
            "bnc...,bno...->bco", x[(slice(None),) * 3 + window], delta, precision=params["precision"]
        )
        blocks.append(jnp.tensordot(weights, jnp.square(per_example), axes=1))
    spatial = len(kernel_spatial)
    canonical = jnp.stack(blocks).reshape(*kernel_spatial, *blocks[0].shape)  # [spatial..., C, O]
    source = {numbers.rhs_spec[0]: spatial + 1, numbers.rhs_spec[1]: spatial}
    source.update({d: i for i, d in enumerate(numbers.rhs_spec[2:])})
    return jnp.transpose(canonical, [source[axis] for axis in range(spatial + 2)])


def _embed_squares(site: Site, ids: jax.Array, deltas: jax.Array, weights: jax.Array, cast) -> jax.Array:
    """Σᵢ wᵢ gᵢ² for a row lookup: per example, δ summed over the positions reading each row, squared."""
    rows_count, width = site.operand.shape
    size = ids.shape[0]
    rows = ids.reshape(size, -1)
    positions = rows.shape[1]
    if site.params["mode"] == jax.lax.GatherScatterMode.FILL_OR_DROP:  # out of range: no gradient
        rows = jnp.where((rows >= 0) & (rows < rows_count), rows, rows_count)
    else:  # CLIP / PROMISE_IN_BOUNDS read the clamped row
        rows = jnp.clip(rows, 0, rows_count - 1)
    examples = jnp.broadcast_to(jnp.arange(size, dtype=rows.dtype)[:, None], rows.shape).ravel()
    order = jnp.arange(size * positions, dtype=jnp.int32)
    examples, rows, order = jax.lax.sort((examples, rows.ravel(), order), num_keys=2)
    starts = jnp.concatenate([jnp.ones(1, bool), (examples[1:] != examples[:-1]) | (rows[1:] != rows[:-1])])
    segment = jnp.cumsum(starts) - 1
    total = size * positions
    sums = jax.ops.segment_sum(deltas.reshape(total, width)[order], segment, num_segments=total)
    segment_rows = jnp.full(total, rows_count, rows.dtype).at[segment].set(rows)
    segment_weights = jnp.zeros(total, sums.dtype).at[segment].set(weights[examples])
    squares = segment_weights[:, None] * jnp.square(sums)
    return jnp.zeros((rows_count, width), sums.dtype).at[segment_rows].add(squares, mode="drop")


def _pull_back(site: Site, leaf: jax.ShapeDtypeStruct, squares: jax.Array, cast: Callable) -> jax.Array:
    """Maps squares of the operand back to the leaf through the element-preserving chain."""
    if not site.chain:
        return squares

    def forward(value):
        for primitive, params in site.chain:
            value = primitive.bind(value, **primitive.get_bind_params(params))
        return value

    return _transpose(forward, leaf, squares, cast)


def squares(plan: Plan, params: PyTree, batch: PyTree, weights: jax.Array, cast: Callable) -> tuple:
    """``(Σᵢ wᵢ (∂ℓᵢ/∂θ)² as a tree like params, per-example losses [B])`` for one batch.

    ``cast`` marks a fresh value as per-device (identity outside ``shard_map``).
    """
    leaves, params_def = jax.tree.flatten(params)
    example_leaves = jax.tree.leaves(batch)
    deltas, grads, losses, recorded = jax.vmap(
        lambda ex: _example_pass(plan, leaves, ex, cast), in_axes=(0,)
    )(example_leaves)
    out = [None] * len(leaves)
    for leaf, site in plan.sites.items():
        operand = recorded[(site.index, site.position)]
        build = {"dense": _dense_squares, "conv": _conv_squares, "embed": _embed_squares}[site.kind]
        value = build(site, operand, deltas[site.index], weights, cast)
        spec = jax.ShapeDtypeStruct(jnp.shape(leaves[leaf]), jnp.result_type(leaves[leaf]))
        out[leaf] = _pull_back(site, spec, value, cast)
    for leaf, grad in zip(plan.fallback, grads, strict=True):
        out[leaf] = jnp.tensordot(weights, jnp.square(grad.astype(jnp.float32)), axes=1)
    for leaf in plan.unused:
        out[leaf] = cast(jnp.zeros(jnp.shape(leaves[leaf]), jnp.float32))
    out = [value.astype(jnp.float32) for value in out]
    return jax.tree.unflatten(params_def, out), losses
