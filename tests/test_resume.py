"""Exact resume (DESIGN D10) and refusal of a checkpoint written by another configuration."""

import jax
import numpy as np
import pytest

from hope_jax.train.checkpoint import ConfigMismatchError
from hope_jax.train.loop import train
from tests.test_main_e2e import tiny_smoke_config


def config_with(num_steps):
    config = tiny_smoke_config()
    config.train.num_steps = num_steps
    config.checkpoint.every_steps = 0
    return config


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    straight = train(config_with(4), str(tmp_path / "straight"))
    first = train(config_with(2), str(tmp_path / "resumed"))
    second = train(config_with(4), str(tmp_path / "resumed"))
    assert first.final_step == 2 and second.final_step == 4
    assert sorted(second.losses) == [3, 4]
    resumed_losses = {**first.losses, **second.losses}
    assert resumed_losses == straight.losses  # same data, same order, same numbers
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(second.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_from_another_config_is_refused_naming_the_keys(tmp_path):
    train(config_with(1), str(tmp_path))
    changed = config_with(2)
    changed.model.d_model = 64
    changed.train.seed = 7
    with pytest.raises(ConfigMismatchError, match=r"model\.d_model: checkpoint=128 now=64.*train\.seed"):
        train(changed, str(tmp_path))
    # The refused run wrote nothing over the existing checkpoint.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


def test_keys_added_after_a_checkpoint_resume_at_their_defaults_only():
    from configs import smoke_transformer
    from hope_jax.train.checkpoint import check_compatible, flatten_config

    config = smoke_transformer.get_config()
    saved = flatten_config(config)
    del saved["model.cms.lm_second_order"]  # as written by a version of hope_jax that lacked the key
    check_compatible(saved, config, "/ckpt")  # the key is at its default: what the older code did
    config.model.cms.lm_second_order = True
    with pytest.raises(ConfigMismatchError, match=r"model\.cms\.lm_second_order: checkpoint='<absent>' now=True"):
        check_compatible(saved, config, "/ckpt")
    saved_with_removed_key = {**flatten_config(smoke_transformer.get_config()), "model.retired_key": 3}
    with pytest.raises(ConfigMismatchError, match=r"model\.retired_key"):
        check_compatible(saved_with_removed_key, smoke_transformer.get_config(), "/ckpt")


def test_a_removed_optimiser_key_at_its_old_default_resumes_and_loads():
    """optim.levels.<l>.ns_stacked was removed (optim/config.REMOVED_LEVEL_KEYS): a checkpoint that recorded its old
    default (every checkpoint before the removal) resumes and loads for evaluation; one that set it is refused."""
    from configs import smoke_transformer
    from eval.common import config_from_flat
    from hope_jax.train.checkpoint import check_compatible, flatten_config

    config = smoke_transformer.get_config()
    old = {**flatten_config(config), "optim.levels.default.ns_stacked": False}
    check_compatible(old, config, "/ckpt")
    assert config_from_flat(old, "/ckpt").optim.levels.default.to_dict() == config.optim.levels.default.to_dict()
    with pytest.raises(ConfigMismatchError, match=r"optim\.levels\.default\.ns_stacked: checkpoint=True"):
        check_compatible({**old, "optim.levels.default.ns_stacked": True}, config, "/ckpt")
