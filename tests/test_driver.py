"""The one chunk driver (hope_jax/memory/driver.py) on a toy memory, against a plain Python loop over chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hope_jax.memory import driver

T, C, D, B = 22, 4, 3, 2  # five whole chunks and a partial one


def toy_step(w, chunk):
    """A memory that reads its chunk-start state and writes a decayed outer product of the chunk's rows."""
    x = chunk["x"]
    return 0.9 * w + 0.1 * jnp.swapaxes(x, -1, -2) @ x / C, x @ w


def loop_reference(w, x, *, tail_updates):
    outputs = []
    for start in range(0, x.shape[0], C):
        new_w, y = toy_step(w, {"x": x[start : start + C]})
        outputs.append(y)
        if start + C <= x.shape[0] or tail_updates:
            w = new_w
    return w, jnp.concatenate(outputs)


@pytest.fixture(scope="module")
def data():
    keys = jax.random.split(jax.random.key(0), 2)
    return jax.random.normal(keys[0], (D, D)), jax.random.normal(keys[1], (B, T, D))


@pytest.mark.parametrize("remat_group", [0, 1, 2, 3, 5])
def test_scan_sequence_is_the_chunk_loop_with_any_remat_group(data, remat_group):
    """Values and gradients at every remat grouping (groups dividing the chunks, a loose group, one group of all)."""
    w, x = data[0], data[1][0]

    def loss(run, w, x):
        end, y = run(w, x)
        return jnp.sum(jnp.sin(y)) + jnp.sum(end**2)

    run = lambda w, x: driver.scan_sequence(toy_step, w, {"x": x}, C, remat_group=remat_group)
    reference = lambda w, x: loop_reference(w, x, tail_updates=True)
    got_end, got_y = run(w, x)
    want_end, want_y = reference(w, x)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_end, want_end, rtol=1e-6, atol=1e-6)
    got = jax.jit(jax.grad(lambda w, x: loss(run, w, x), argnums=(0, 1)))(w, x)
    want = jax.grad(lambda w, x: loss(reference, w, x), argnums=(0, 1))(w, x)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_scan_sequence_takes_any_time_axis(data):
    """A batched step on [B, T, d] with time_axis 1 equals the per-sequence scan."""
    w, x = data
    ws = jnp.broadcast_to(w, (B, D, D))
    end, y = driver.scan_sequence(lambda s, c: jax.vmap(toy_step)(s, c), ws, {"x": x}, C, time_axis=1)
    for b in range(B):
        want_end, want_y = loop_reference(w, x[b], tail_updates=True)
        np.testing.assert_allclose(y[b], want_y, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(end[b], want_end, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("splits", [(), (1,), (5, 6, 13), (8, 16)], ids=["whole", "one", "off", "on"])
def test_run_chunked_pieces_carry_the_last_boundary(data, splits):
    """Pieces (one-token pieces included) give the whole sequence's outputs, and the carry holds the state at the last
    chunk boundary with the tokens since it pending: the trailing partial chunk's update is dropped."""
    w, x = data
    batched = lambda s, c: jax.vmap(toy_step)(s, c)
    ws = jnp.broadcast_to(w, (B, D, D))
    carry, pieces = None, []
    bounds = (0, *splits, T)
    for start, stop in zip(bounds, bounds[1:], strict=False):
        y, carry = driver.run_chunked(batched, {"x": x[:, start:stop]}, C, fast=ws, carry=carry, remat_group=1)
        pieces.append(y)
    want_end, want_y = loop_reference(w, x[0], tail_updates=False)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1)[0], want_y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(carry["fast"][0], want_end, rtol=1e-6, atol=1e-6)
    assert int(carry["count"]) == T % C
    np.testing.assert_array_equal(carry["pending"]["x"][:, : T % C], x[:, T - T % C :])


@pytest.mark.parametrize(
    "kwargs,message",
    [({"chunk_size": 0}, "chunk_size must be a positive integer"), ({"remat_group": -1}, "remat_group")],
)
def test_bad_driver_options_are_named(data, kwargs, message):
    options = {"chunk_size": C, "remat_group": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        driver.scan_sequence(
            toy_step, data[0], {"x": data[1][0]}, options["chunk_size"], remat_group=options["remat_group"]
        )
