"""Everything a run compiles, built once from the config: mesh, model spec, optimiser, state layout, jitted steps.

The training loop, the ahead-of-time config checks and the benchmarks all build their step through `build_trainer`, so
what is tested and measured is what trains.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from hope_jax import sharding as shd
from hope_jax.optim import build_optimizer, level_update_norms
from hope_jax.train.state import ModelSpec, StateLayout, model_spec, state_layout
from hope_jax.train.step import make_eval_step, make_train_step


@dataclasses.dataclass(frozen=True)
class Trainer:
    mesh: jax.sharding.Mesh
    rules: dict
    spec: ModelSpec
    tx: Any
    labels: Any
    layout: StateLayout
    batch_sharding: jax.sharding.NamedSharding
    train_step: Any  # jitted (state, batch) -> (state, metrics); donates the state
    eval_step: Any  # jitted (params, batch) -> (summed nll, summed weight)
    batch_shape: tuple[int, int]

    @property
    def num_params(self) -> int:
        return sum(math.prod(x.shape) for x in jax.tree.leaves(self.spec.abstract_params))

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        abstract = lambda dtype: jax.ShapeDtypeStruct(self.batch_shape, dtype, sharding=self.batch_sharding)
        return {"inputs": abstract(jnp.int32), "targets": abstract(jnp.int32), "mask": abstract(jnp.float32)}

    def lower(self) -> jax.stages.Lowered:
        """The train step lowered on abstract inputs: nothing is allocated. Traced inside the mesh, so the models'
        sharding constraints on per-sequence state (hope_jax.sharding.constrain) apply."""
        with jax.set_mesh(self.mesh):
            return self.train_step.lower(self.layout.abstract, self.abstract_batch())

    def step(self, state, batch):
        """One train step, traced (on first use) inside the mesh like `lower`."""
        with jax.set_mesh(self.mesh):
            return self.train_step(state, batch)


def build_trainer(config, devices: Sequence[jax.Device] | None = None) -> Trainer:
    mesh = shd.make_mesh(config.mesh, devices)
    rules = shd.axis_rules(config.mesh)
    spec = model_spec(config.model)
    tx, labels = build_optimizer(
        config.optim,
        spec.abstract_params,
        tokens_per_step=config.train.global_batch_size * config.train.seq_len,
        total_steps=config.train.num_steps,
        axis_names=spec.logical_specs,
    )
    layout = state_layout(spec, tx, mesh, rules)
    batch_sharding = shd.batch_sharding(mesh, rules)
    step = make_train_step(
        spec,
        tx,
        grad_accum_steps=config.train.grad_accum_steps,
        update_norms_fn=lambda updates: level_update_norms(updates, labels),
    )
    train_step = jax.jit(
        step,
        in_shardings=(layout.shardings, batch_sharding),
        out_shardings=(layout.shardings, shd.replicated(mesh)),
        donate_argnums=(0,),
    )
    eval_step = jax.jit(
        make_eval_step(spec),
        in_shardings=(layout.shardings.params, batch_sharding),
        out_shardings=shd.replicated(mesh),
    )
    return Trainer(
        mesh=mesh,
        rules=rules,
        spec=spec,
        tx=tx,
        labels=labels,
        layout=layout,
        batch_sharding=batch_sharding,
        train_step=train_step,
        eval_step=eval_step,
        batch_shape=(config.train.global_batch_size, config.train.seq_len),
    )
