"""Autoregressive generation through the stateful model API.

The prompt is fed once (prefill), then one token per step inside `lax.scan`, each step carrying the model
state: recurrent models keep constant-size fast weights, attention models a KV cache (window − 1 slots
when windowed, else prompt + new tokens). Everything runs under one `jax.jit`. Greedy decoding is
temperature 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def filter_logits(logits_bv: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Logits outside the top-k set and outside the smallest set whose probability reaches top_p become −inf.

    top_k = 0 and top_p = 1 disable the filters; the most likely token always survives.
    """
    if top_k > 0:
        kth_largest = jax.lax.top_k(logits_bv, top_k)[0][:, -1:]
        logits_bv = jnp.where(logits_bv < kth_largest, -jnp.inf, logits_bv)
    if top_p < 1.0:
        sorted_desc = jnp.sort(logits_bv, axis=-1)[:, ::-1]
        probs_desc = jax.nn.softmax(sorted_desc, axis=-1)
        # Probability mass strictly before each sorted token: kept while that mass is below top_p.
        mass_before = jnp.cumsum(probs_desc, axis=-1) - probs_desc
        kept = mass_before < top_p
        threshold = jnp.min(jnp.where(kept, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        logits_bv = jnp.where(logits_bv < threshold, -jnp.inf, logits_bv)
    return logits_bv


def sample_token(
    logits_bv: jax.Array, rng: jax.Array, *, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
    """int32[B]: argmax when temperature is 0, else a draw from softmax(filtered logits / temperature)."""
    if temperature == 0.0:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits_bv.astype(jnp.float32) / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k", "top_p"))
def _generate(graphdef, params, prompt_bt, rng, *, max_new_tokens, temperature, top_k, top_p):
    model = nnx.merge(graphdef, params)
    batch, prompt_len = prompt_bt.shape
    sample = functools.partial(sample_token, temperature=temperature, top_k=top_k, top_p=top_p)
    state = model.init_state(batch, max_len=prompt_len + max_new_tokens)
    logits_btv, state = model(prompt_bt, state)
    step_rngs = jax.random.split(rng, max_new_tokens)
    first = sample(logits_btv[:, -1], step_rngs[0])
    rest_bn, _ = decode(graphdef, params, first, state, step_rngs[1:], sample)
    return jnp.concatenate([first[:, None], rest_bn], axis=1)


def decode(graphdef, params, token_b, state, step_rngs, sample):
    """One token per step inside `lax.scan` from `token_b` and the state after it was chosen: returns
    (int32[B, len(step_rngs)] next tokens, final state). Traced inside a jit (bench generate times it alone)."""

    def step(carry, step_rng):
        token_b, state = carry
        # Merged inside the scan body so every variable lives at this trace level (nnx transforms in the
        # model, e.g. remat, may not touch variables created by an outer trace).
        logits_btv, state = nnx.merge(graphdef, params)(token_b[:, None], state)
        next_b = sample(logits_btv[:, -1], step_rng)
        return (next_b, state), next_b

    (_, state), tokens_nb = jax.lax.scan(step, (token_b, state), step_rngs)
    return tokens_nb.T, state


def generate(
    model: nnx.Module,
    prompt_bt: jax.Array,
    max_new_tokens: int,
    *,
    rng: jax.Array | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> jax.Array:
    """int32[B, max_new_tokens] continuation of int32[B, P] prompts (P ≥ 1); sampling needs rng."""
    if max_new_tokens < 1 or prompt_bt.shape[1] < 1:
        raise ValueError(f"need a non-empty prompt and max_new_tokens ≥ 1, got {prompt_bt.shape}, {max_new_tokens}")
    if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"temperature ≥ 0, top_k ≥ 0, 0 < top_p ≤ 1 required; got {temperature}, {top_k}, {top_p}")
    if temperature > 0 and rng is None:
        raise ValueError("sampling (temperature > 0) needs an rng key")
    rng = jax.random.key(0) if rng is None else rng
    graphdef, params = nnx.split(model)
    return _generate(
        graphdef,
        params,
        jnp.asarray(prompt_bt, jnp.int32),
        rng,
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
    )
