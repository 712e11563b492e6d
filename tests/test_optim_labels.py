"""Level labels: ordered regex rules over path strings, errors naming the problem, per-level update norms."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hope_jax  # noqa: F401  (switches off eager sharding)
from hope_jax.optim import (
    build_optimizer,
    default_optim_config,
    level_config,
    level_update_norms,
    make_labeller,
)


def _params():
    return {
        "embed": {"embedding": jnp.ones((5, 4))},
        "blocks": [
            {
                "cms": {"levels": [{"w_in": jnp.ones((4, 8))}, {"w_in": jnp.ones((4, 8))}]},
                "norm": jnp.ones(4),
            },
        ],
    }


def _config(rules, levels=("default",)):
    cfg = default_optim_config()
    with cfg.unlocked():
        for name in levels:
            cfg.levels[name] = level_config(schedule="constant")
        cfg.rules = list(rules)
    return cfg


def test_first_matching_rule_wins_and_paths_are_slash_joined():
    labeller = make_labeller([(r"blocks/\d+/cms/levels/1/.*", "slow"), (r"blocks/.*", "fast"), (".*", "rest")])
    labels = labeller(_params())
    assert labels["blocks"][0]["cms"]["levels"][1]["w_in"] == "slow"
    assert labels["blocks"][0]["cms"]["levels"][0]["w_in"] == "fast"
    assert labels["blocks"][0]["norm"] == "fast"
    assert labels["embed"]["embedding"] == "rest"


def test_unlabelled_parameters_are_all_named():
    cfg = _config([(r"blocks/.*", "default")])
    with pytest.raises(ValueError, match="embed/embedding") as err:
        build_optimizer(cfg, _params(), tokens_per_step=8, total_steps=10)
    assert "1 parameter(s) match no optim.rules entry" in str(err.value)
    cfg = _config([(r"embed/.*", "default")])
    with pytest.raises(ValueError) as err:
        build_optimizer(cfg, _params(), tokens_per_step=8, total_steps=10)
    for path in ("blocks/0/cms/levels/0/w_in", "blocks/0/cms/levels/1/w_in", "blocks/0/norm"):
        assert path in str(err.value)


def test_bad_level_settings_fail_by_name():
    with pytest.raises(ValueError, match=r"undefined level\(s\) \['nope'\]"):
        build_optimizer(_config([(".*", "nope")]), _params(), tokens_per_step=8, total_steps=10)
    with pytest.raises(ValueError, match="period_tokens = 12 is not a positive multiple of tokens_per_step = 8"):
        cfg = _config([(".*", "default")])
        cfg.levels.default.period_tokens = 12
        build_optimizer(cfg, _params(), tokens_per_step=8, total_steps=10)
    with pytest.raises(KeyError, match="lrr"):
        level_config(lrr=1.0)
    cfg = _config([(".*", "default")])
    cfg.levels.default.kind = "sgdd"
    with pytest.raises(ValueError, match="optim.levels.default.kind = 'sgdd'"):
        build_optimizer(cfg, _params(), tokens_per_step=8, total_steps=10)


def test_nnx_state_paths_drop_the_value_key_and_norms_follow_labels():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    cfg = _config([(r".*kernel", "weights"), (r".*bias", "default")], levels=("default", "weights"))
    _, labels = build_optimizer(cfg, state, tokens_per_step=4, total_steps=10)
    assert labels["kernel"].get_value() == "weights" and labels["bias"].get_value() == "default"
    updates = {
        "kernel": jnp.full((3, 2), 2.0),
        "bias": jnp.array([3.0, 4.0]),
    }  # pure arrays, as in a train step
    norms = level_update_norms(updates, labels)
    np.testing.assert_allclose(norms["weights"], np.sqrt(6 * 4.0), rtol=1e-6)
    np.testing.assert_allclose(norms["default"], 5.0, rtol=1e-6)
