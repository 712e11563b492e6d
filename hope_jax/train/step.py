"""The jitted train and eval steps: token-weighted cross-entropy, gradient accumulation, non-finite guard."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from hope_jax.train.state import ModelSpec, TrainState, merge_model


def cross_entropy_sums(logits_btv: jax.Array, targets_bt: jax.Array, mask_bt: jax.Array):
    """Summed masked token negative log-likelihood and the summed mask (fp32 throughout)."""
    logits_btv = logits_btv.astype(jnp.float32)
    log_normaliser_bt = jax.nn.logsumexp(logits_btv, axis=-1)
    target_logit_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
    nll_bt = log_normaliser_bt - target_logit_bt
    mask_bt = mask_bt.astype(jnp.float32)
    return jnp.sum(nll_bt * mask_bt), jnp.sum(mask_bt)


def model_loss_sums(spec: ModelSpec, params, batch):
    model = merge_model(spec, params)
    logits_btv, _ = model(batch["inputs"])
    return cross_entropy_sums(logits_btv, batch["targets"], batch["mask"])


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
    """(state, batch) -> (new_state, metrics). A non-finite loss or gradient never reaches the parameters: that step
    keeps the old state and reports ``nonfinite = 1`` (the loop then halts or skips, by config)."""

    def step(state: TrainState, batch) -> tuple[TrainState, dict]:
        total_weight = jnp.maximum(jnp.sum(batch["mask"].astype(jnp.float32)), 1.0)

        def loss_fn(params, micro):
            loss_sum, _ = model_loss_sums(spec, params, micro)
            return loss_sum / total_weight

        grad_fn = jax.value_and_grad(loss_fn)
        if grad_accum_steps == 1:
            loss, grads = grad_fn(state.params, batch)
        else:

            def accumulate(carry, micro):
                loss_acc, grads_acc = carry
                loss_micro, grads_micro = grad_fn(state.params, micro)
                return (loss_acc + loss_micro, jax.tree.map(jnp.add, grads_acc, grads_micro)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (loss, grads), _ = jax.lax.scan(
                accumulate, (jnp.zeros((), jnp.float32), zeros), _split_microbatches(batch, grad_accum_steps)
            )

        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
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
            "param_norm": optax.tree.norm(state.params),
            "tokens": total_weight,
            "nonfinite": 1 - finite.astype(jnp.int32),
        }
        if update_norms_fn is not None:
            metrics.update({f"update_norm/{k}": v for k, v in update_norms_fn(updates).items()})
        return new_state, metrics

    return step


def make_eval_step(spec: ModelSpec) -> Callable:
    """(params, batch) -> (summed nll, summed weight): sums, so batches of any size combine exactly."""

    def eval_step(params, batch):
        return model_loss_sums(spec, params, batch)

    return eval_step
