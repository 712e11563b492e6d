"""The logical-axis rule table and mesh construction."""

import jax
import ml_collections
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from hope_jax import sharding as shd


def mesh_cfg(data=-1, fsdp=1, tensor=1, rules=()):
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor, "rules": rules})


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [((-1, 1, 1), (8, 1, 1)), ((2, -1, 2), (2, 2, 2)), ((1, 1, -1), (1, 1, 8)), ((2, 2, 2), (2, 2, 2))],
)
def test_mesh_shape_fills_the_remaining_devices(sizes, expected):
    assert shd.resolve_mesh_shape(mesh_cfg(*sizes), 8) == expected


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ((-1, -1, 1), "at most one"),
        ((3, -1, 1), "not divisible"),
        ((2, 2, 1), "4 but 8 devices"),
        ((0, 1, 1), "positive"),
    ],
)
def test_impossible_mesh_shapes_are_named(sizes, message):
    with pytest.raises(ValueError, match=message):
        shd.resolve_mesh_shape(mesh_cfg(*sizes), 8)


def test_mesh_uses_all_devices_with_named_axes():
    mesh = shd.make_mesh(mesh_cfg(2, 2, 2))
    assert mesh.axis_names == shd.MESH_AXES
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.devices.size == jax.device_count() == 8


def test_logical_specs_follow_the_table_and_skip_indivisible_dims():
    mesh = shd.make_mesh(mesh_cfg(2, 2, 2))
    rules = shd.axis_rules(mesh_cfg(2, 2, 2))
    assert shd.logical_to_spec(("embed", "mlp"), (64, 256), mesh, rules) == PartitionSpec("fsdp", "tensor")
    # 183 is not divisible by the tensor axis: that dimension stays replicated instead of being padded.
    assert shd.logical_to_spec(("vocab", "embed"), (183, 64), mesh, rules) == PartitionSpec(None, "fsdp")
    assert shd.logical_to_spec(("batch", "seq"), (8, 16), mesh, rules) == PartitionSpec(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="no rule"):
        shd.logical_to_spec(("embedd",), (4,), mesh, rules)


def test_rule_overrides_come_from_the_config():
    cfg = mesh_cfg(2, 2, 2, rules=(("mlp", None), ("embed", ["fsdp", "tensor"])))
    rules = shd.axis_rules(cfg)
    mesh = shd.make_mesh(cfg)
    assert shd.logical_to_spec(("embed", "mlp"), (64, 256), mesh, rules) == PartitionSpec(("fsdp", "tensor"), None)
    with pytest.raises(ValueError, match="unknown logical axis 'emb'"):
        shd.axis_rules(mesh_cfg(rules=(("emb", None),)))


def test_large_replicated_parameter_is_refused():
    mesh = shd.make_mesh(mesh_cfg(2, 2, 2))
    big = jax.ShapeDtypeStruct((1024, 1024), "float32")
    replicated = {"w": NamedSharding(mesh, PartitionSpec())}
    with pytest.raises(ValueError, match=r"\['w'\] \(1024, 1024\)"):
        shd.check_large_parameters_sharded(replicated, {"w": big})
    shd.check_large_parameters_sharded({"w": NamedSharding(mesh, PartitionSpec("fsdp", None))}, {"w": big})


def test_pure_data_parallelism_may_replicate_large_parameters():
    mesh = shd.make_mesh(mesh_cfg(8, 1, 1))
    big = jax.ShapeDtypeStruct((1024, 1024), "float32")
    shd.check_large_parameters_sharded({"w": NamedSharding(mesh, PartitionSpec())}, {"w": big})


def test_fast_weight_state_is_sharded_over_batch_and_heads():
    from flax import nnx

    from hope_jax.models import apply_overrides, build_model, default_model_config

    cfg = apply_overrides(
        default_model_config(),
        {"name": "hope", "vocab_size": 64, "d_model": 16, "n_layers": 1, "n_heads": 2,
         "memory": {"chunk_size": 4, "aux_chunk_size": 4},
         "cms": {"periods": (4, 0), "objectives": ("local", "frozen"), "hidden": (16, 16)}},
    )  # fmt: skip
    model = build_model(cfg, rngs=nnx.Rngs(0))
    mesh = shd.make_mesh(mesh_cfg(2, 2, 2))
    with jax.set_mesh(mesh):
        state = nnx.jit(lambda m: m.init_state(4))(model)
    memories = state["layers"][0]["mixer"]["chunks"]["fast"]  # every memory and momentum, in either layout
    for leaf in jax.tree.leaves(memories):
        assert leaf.shape[:2] == (4, 2)
        assert leaf.sharding.spec[:2] == (("data", "fsdp"), "tensor"), leaf.sharding
    cms_fast = [
        leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(state["layers"][0]["cms"])[0]
        if "fast" in jax.tree_util.keystr(path)
    ]
    assert cms_fast  # the in-context level's fast weights
    for leaf in cms_fast:
        assert leaf.sharding.spec[0] == ("data", "fsdp"), leaf.sharding
    # Outside a mesh the same call is unconstrained (single device), so model code may call constrain anywhere.
    assert shd.constrain(jax.numpy.ones((4, 2)), ("batch", "heads")).sharding.is_fully_replicated
