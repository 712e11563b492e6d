"""Meshes and the ONE table that maps logical axis names to mesh axes (DESIGN D1).

Parameters and activations carry logical names only ('embed', 'mlp', 'batch', ...). A tier changes the mesh sizes, or
overrides individual rules through ``mesh.rules`` in its config; model code never names a mesh axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None for replicated). Weights are sharded over 'fsdp' on their
# model dimension and over 'tensor' on their wide dimension; the batch is split over every data-parallel axis.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("kv", None),
    ("memory_hidden", None),
    ("conv_window", None),
    ("layers", None),
)

# A parameter with at least this many elements must not be fully replicated on a multi-device mesh.
LARGE_PARAMETER_ELEMENTS = 1 << 20


def resolve_mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """Sizes of ('data', 'fsdp', 'tensor'); at most one may be -1, meaning 'all remaining devices'."""
    sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp), int(mesh_cfg.tensor)]
    fills = [i for i, s in enumerate(sizes) if s == -1]
    if len(fills) > 1:
        raise ValueError(f"mesh: at most one of data/fsdp/tensor may be -1, got {dict(zip(MESH_AXES, sizes))}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if fills:
        if num_devices % known:
            raise ValueError(
                f"mesh: {num_devices} devices are not divisible by the fixed mesh sizes "
                f"{dict(zip(MESH_AXES, sizes))} (product {known})"
            )
        sizes[fills[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh: data*fsdp*tensor = {math.prod(sizes)} but {num_devices} devices are available "
            f"(mesh {dict(zip(MESH_AXES, sizes))})"
        )
    return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices) if devices is not None else jax.devices()
    shape = resolve_mesh_shape(mesh_cfg, len(devices))
    if devices == jax.devices():
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def axis_rules(mesh_cfg=None) -> dict[str, str | tuple[str, ...] | None]:
    """The rule table, with any per-config overrides from ``mesh.rules`` (a list of (logical, mesh-axes) pairs)."""
    rules = dict(LOGICAL_AXIS_RULES)
    overrides = getattr(mesh_cfg, "rules", None) if mesh_cfg is not None else None
    for logical, mesh_axes in overrides or ():
        if logical not in rules:
            raise ValueError(f"mesh.rules names unknown logical axis {logical!r}; known: {sorted(rules)}")
        rules[logical] = tuple(mesh_axes) if isinstance(mesh_axes, list | tuple) else mesh_axes
    return rules


def constrain(x: jax.Array, logical_axes) -> jax.Array:
    """Pin an activation or per-sequence state to the layout its logical axes ask for (fast weights: 'batch' over the
    data-parallel axes, 'heads' over 'tensor'). A no-op outside a mesh context (`jax.set_mesh`) or on one device, so
    model code can call it unconditionally; the trainer traces its steps inside the mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh, dict(LOGICAL_AXIS_RULES)))


def _mesh_axes_size(mesh: Mesh, mesh_axes) -> int:
    if mesh_axes is None:
        return 1
    names = (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
    return math.prod(mesh.shape[name] for name in names)


def logical_to_spec(logical_axes, shape: Sequence[int], mesh: Mesh, rules: dict) -> PartitionSpec:
    """PartitionSpec for one array. A dimension that the mesh axes do not divide stays replicated (small vocabularies,
    odd head counts) rather than failing: GSPMD would pad it, which wastes memory silently."""
    if logical_axes is None:
        return PartitionSpec()
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {logical_axes} do not match the array rank of shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ValueError(f"logical axis {name!r} has no rule in hope_jax.sharding; known: {sorted(rules)}")
        mesh_axes = rules[name]
        names = () if mesh_axes is None else ((mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes))
        # A mesh axis may shard only one dimension of an array.
        names = tuple(n for n in names if n not in used and mesh.shape[n] > 1)
        if not names or dim % _mesh_axes_size(mesh, names):
            spec.append(None)
            continue
        used.update(names)
        spec.append(names[0] if len(names) == 1 else names)
    return PartitionSpec(*spec)


def _is_partition_spec(x) -> bool:
    return isinstance(x, PartitionSpec)


def tree_shardings(logical_tree, abstract_tree, mesh: Mesh, rules: dict):
    """NamedShardings for a pytree, from a matching pytree of logical PartitionSpecs (as nnx.get_partition_spec gives)."""
    return jax.tree.map(
        lambda logical, leaf: NamedSharding(mesh, logical_to_spec(tuple(logical), leaf.shape, mesh, rules)),
        logical_tree,
        abstract_tree,
        is_leaf=_is_partition_spec,
    )


def batch_sharding(mesh: Mesh, rules: dict, ndim: int = 2) -> NamedSharding:
    batch_axes = rules["batch"]
    return NamedSharding(mesh, PartitionSpec(batch_axes, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_large_parameters_sharded(shardings, abstract_params, *, threshold: int = LARGE_PARAMETER_ELEMENTS):
    """Raise if a large parameter stays fully replicated on a mesh with a model-parallel axis (a missing logical-axis rule).
    On a purely data-parallel mesh (fsdp = tensor = 1) replication is the intent and nothing is checked."""
    offenders = []
    for (path, sharding), leaf in zip(
        jax.tree_util.tree_flatten_with_path(shardings)[0], jax.tree.leaves(abstract_params)
    ):
        model_parallel = sharding.mesh.shape["fsdp"] * sharding.mesh.shape["tensor"]
        if model_parallel > 1 and leaf.size >= threshold and sharding.is_fully_replicated:
            offenders.append(f"{jax.tree_util.keystr(path)} {tuple(leaf.shape)}")
    if offenders:
        raise ValueError(
            "these large parameters would be replicated on every device; give them logical axis names that the "
            "rule table shards: " + ", ".join(offenders)
        )
