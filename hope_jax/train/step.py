"""The jitted train and eval steps: token-weighted cross-entropy, gradient accumulation, non-finite guard."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from hope_jax.train.state import ModelSpec, TrainState, merge_model


def cross_entropy_sums(logits_btv: jax.Array, targets_bt: jax.Array, mask_bt: jax.Array):
    """Summed masked token negative log-likelihood and the summed mask (fp32 throughout)."""
    logits_btv = logits_btv.astype(jnp.float32)
    log_normaliser_bt = jax.nn.logsumexp(logits_btv, axis=-1)
    target_logit_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
    nll_bt = log_normaliser_bt - target_logit_bt
    mask_bt = mask_bt.astype(jnp.float32)
    return jnp.sum(nll_bt * mask_bt), jnp.sum(mask_bt)


def _diagnostic_means(intermediates) -> dict[str, jax.Array]:
    """Inner-loop diagnostics the model sowed (nnx.Intermediate), each averaged to a scalar under its own path."""
    flat = jax.tree_util.tree_flatten_with_path(intermediates)[0]
    means: dict[str, list[jax.Array]] = {}
    for path, value in flat:
        # Paths look like blocks/3/mixer/memory_loss/0: the metric is named by its last named key, summed over layers.
        names = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
        name = next((n for n in reversed(names) if n and not n.isdigit() and n != "value"), "intermediate")
        means.setdefault(name, []).append(jnp.mean(value.astype(jnp.float32)))
    return {f"inner/{name}": jnp.mean(jnp.stack(values)) for name, values in sorted(means.items())}


def model_loss_sums(spec: ModelSpec, params, batch):
    """(summed nll, summed weight, inner-loop diagnostics) of the model on one batch."""
    model = merge_model(spec, params)
    logits_btv, _ = model(batch["inputs"])
    diagnostics = _diagnostic_means(nnx.to_pure_dict(nnx.pop(model, nnx.Intermediate)))
    nll, weight = cross_entropy_sums(logits_btv, batch["targets"], batch["mask"])
    return nll, weight, diagnostics


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def _split_microbatches(batch, num_micro: int):
    def split(x):
        if x.shape[0] % num_micro:
            raise ValueError(f"batch of {x.shape[0]} is not divisible by train.grad_accum_steps={num_micro}")
        return x.reshape(num_micro, x.shape[0] // num_micro, *x.shape[1:])

    return jax.tree.map(split, batch)


def make_train_step(
    spec: ModelSpec,
    tx: optax.GradientTransformation,
    *,
    grad_accum_steps: int = 1,
    update_norms_fn: Callable | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """(state, batch) -> (new_state, metrics). A non-finite loss, gradient, update or new parameter never reaches the
    state: that step keeps the old state and reports ``nonfinite = 1`` (the loop then halts or skips, by config). The
    update and the parameters are checked too because a finite loss can still give a NaN update (a corrupted Adam
    moment; eps = 0 with a zero gradient)."""

    def step(state: TrainState, batch) -> tuple[TrainState, dict]:
        total_weight = jnp.maximum(jnp.sum(batch["mask"].astype(jnp.float32)), 1.0)

        def loss_fn(params, micro):
            loss_sum, _, diagnostics = model_loss_sums(spec, params, micro)
            return loss_sum / total_weight, diagnostics

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if grad_accum_steps == 1:
            (loss, diagnostics), grads = grad_fn(state.params, batch)
        else:

            def accumulate(carry, micro):
                loss_acc, grads_acc = carry
                (loss_micro, diagnostics_micro), grads_micro = grad_fn(state.params, micro)
                return (loss_acc + loss_micro, jax.tree.map(jnp.add, grads_acc, grads_micro)), diagnostics_micro

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (loss, grads), diagnostics_per_micro = jax.lax.scan(
                accumulate, (jnp.zeros((), jnp.float32), zeros), _split_microbatches(batch, grad_accum_steps)
            )
            diagnostics = jax.tree.map(lambda x: jnp.mean(x, axis=0), diagnostics_per_micro)

        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        grad_norm, update_norm = optax.tree.norm(grads), optax.tree.norm(updates)
        # Element-wise for the update and parameters: a norm of large finite values can overflow float32.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(updates) & _all_finite(new_params)
        keep_if_nonfinite = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        # The step counter always advances: a skipped step still consumed its batch, and resume relies on the count.
        new_state = TrainState(
            step=state.step + 1,
            params=keep_if_nonfinite(new_params, state.params),
            opt_state=keep_if_nonfinite(new_opt_state, state.opt_state),
            rng=state.rng,
        )
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "update_norm": update_norm,
            "param_norm": optax.tree.norm(state.params),
            "tokens": total_weight,
            "nonfinite": 1 - finite.astype(jnp.int32),
            **diagnostics,
        }
        if update_norms_fn is not None:
            metrics.update({f"update_norm/{k}": v for k, v in update_norms_fn(updates).items()})
        return new_state, metrics

    return step


def make_eval_step(spec: ModelSpec) -> Callable:
    """(params, batch) -> (summed nll, summed weight): sums, so batches of any size combine exactly."""

    def eval_step(params, batch):
        nll, weight, _ = model_loss_sums(spec, params, batch)
        return nll, weight

    return eval_step
