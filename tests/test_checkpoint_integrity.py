"""Checkpoints cannot silently corrupt a run (hope_jax/train/integrity.py): flipped bits are caught, damaged steps are
named and set aside, resume and evaluation fall back to the newest good step, nothing non-finite is trained or saved,
and a checkpoint directory that cannot be written stops the run at once."""

import dataclasses
import errno
import json
import os
import pathlib
import re
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from eval.common import RunLoadError, load_run
from hope_jax.train import integrity
from hope_jax.train.checkpoint import Checkpointer, CheckpointWriteError, NoGoodCheckpointError
from hope_jax.train.loop import NonFiniteLossError, _loader, train
from hope_jax.train.state import create_train_state
from hope_jax.train.step import make_train_step
from hope_jax.train.trainer import build_trainer
from tests.test_main_e2e import tiny_smoke_config


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    """A tiny run with checkpoints at steps 1 and 2; tests damage copies of it."""
    workdir = tmp_path_factory.mktemp("run")
    train(tiny_smoke_config(), str(workdir))
    return workdir


@pytest.fixture
def run_copy(two_step_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(two_step_run, copy)
    return copy


@pytest.fixture(scope="module")
def trainer():
    return build_trainer(tiny_smoke_config())


def restore_newest_good(workdir, trainer):
    config = tiny_smoke_config()
    checkpointer = Checkpointer(str(workdir / "checkpoints"), max_to_keep=3, async_save=False)
    try:
        return checkpointer.restore_newest_good(trainer.layout, _loader(config, "train"), config)
    finally:
        checkpointer.close()


def largest_file(directory: pathlib.Path) -> pathlib.Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def flip_bit(path: pathlib.Path, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


def test_fingerprint_changes_with_any_single_flipped_bit():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 7)), jnp.float32)
    base, _ = integrity.state_fingerprints({"x": x})
    bits = np.asarray(jax.lax.bitcast_convert_type(x, jnp.uint32))
    for index in range(x.size):
        for bit in (0, 13, 31):
            flipped = bits.copy().reshape(-1)
            flipped[index] ^= np.uint32(1 << bit)
            changed = jax.lax.bitcast_convert_type(jnp.asarray(flipped.reshape(x.shape)), jnp.float32)
            assert integrity.state_fingerprints({"x": changed})[0] != base


@pytest.mark.parametrize("fraction", [0.1, 0.35, 0.6, 0.85])
def test_a_flipped_bit_in_the_state_is_caught_and_resume_falls_back(run_copy, trainer, fraction, caplog):
    data_file = largest_file(run_copy / "checkpoints" / "2" / "state")
    flip_bit(data_file, int(data_file.stat().st_size * 8 * fraction))
    step, state = restore_newest_good(run_copy, trainer)
    assert step == 1 and int(state.step) == 1
    assert "checkpoint step 2 is damaged" in caplog.text
    assert sorted(os.listdir(run_copy / "checkpoints")) == ["1", "damaged"]
    assert os.listdir(run_copy / "checkpoints" / "damaged") == ["2"]  # set aside, not deleted


def change_a_params_fingerprint(step_dir: pathlib.Path) -> str:
    """As if the bytes of one parameter array had changed: its saved fingerprint no longer matches."""
    meta = step_dir / "meta" / "metadata"
    record = json.loads(meta.read_text())
    name = next(n for n in record["fingerprints"] if n.startswith(".params"))
    record["fingerprints"][name] ^= 1
    meta.write_text(json.dumps(record))
    return name


def test_a_changed_array_is_named(run_copy, trainer):
    name = change_a_params_fingerprint(run_copy / "checkpoints" / "2")
    config = tiny_smoke_config()
    checkpointer = Checkpointer(str(run_copy / "checkpoints"), max_to_keep=3, async_save=False)
    with pytest.raises(integrity.CheckpointDamagedError, match="step 2 is damaged: array " + re.escape(name)):
        checkpointer.restore(2, trainer.layout, _loader(config, "train"), config)
    checkpointer.close()


DAMAGE = {
    "truncated_data": (lambda step: largest_file(step / "state").write_bytes(b"\0" * 7), "state"),
    "empty_checkpoint_metadata": (lambda step: (step / "_CHECKPOINT_METADATA").write_text(""), "_CHECKPOINT_METADATA"),
    "garbled_meta": (lambda step: (step / "meta" / "metadata").write_bytes(b"\xff\xfe{garbled"), "meta/metadata"),
    "garbled_data_state": (lambda step: (step / "data" / "process_0-of-1.json").write_text("{"), "process_0-of-1.json"),
    "missing_state": (lambda step: shutil.rmtree(step / "state"), "2/state"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_is_named_set_aside_and_the_previous_one_restored(run_copy, trainer, damage, caplog):
    apply, named = DAMAGE[damage]
    apply(run_copy / "checkpoints" / "2")
    step, _ = restore_newest_good(run_copy, trainer)
    assert step == 1
    assert "checkpoint step 2 is damaged" in caplog.text and named in caplog.text
    assert (run_copy / "checkpoints" / "damaged" / "2").is_dir()


def test_no_good_checkpoint_left_is_one_clear_error(run_copy, trainer):
    for step in ("1", "2"):
        (run_copy / "checkpoints" / step / "meta" / "metadata").write_text("not json")
    with pytest.raises(NoGoodCheckpointError, match=r"no good checkpoint left in .*step 2 .*step 1 "):
        restore_newest_good(run_copy, trainer)


def test_resume_from_the_fallback_continues_the_run_exactly(run_copy, two_step_run, tmp_path):
    flip_bit(largest_file(run_copy / "checkpoints" / "2" / "state"), 1000)
    config = tiny_smoke_config()
    config.train.num_steps = 3
    resumed = train(config, str(run_copy))
    straight = train(config, str(tmp_path / "straight"))
    assert sorted(resumed.losses) == [2, 3]  # step 2 is trained again from step 1
    assert resumed.losses == {s: straight.losses[s] for s in (2, 3)}


def test_evaluation_loads_the_newest_good_checkpoint(run_copy, caplog):
    change_a_params_fingerprint(run_copy / "checkpoints" / "2")  # evaluation reads the parameters only
    assert load_run(str(run_copy)).step == 1
    assert "checkpoint step 2 is damaged" in caplog.text
    with pytest.raises(RunLoadError, match="no checkpoint for step 2"):  # it was set aside
        load_run(str(run_copy), step=2)


def test_a_nan_update_with_a_finite_loss_never_reaches_the_state(trainer):
    """A corrupted Adam moment: the loss and gradient are finite, the update is not."""
    config = tiny_smoke_config()
    state = create_train_state(config.model, trainer.tx, trainer.layout, config.train.seed)
    leaves, treedef = jax.tree.flatten(state.opt_state)
    index = next(i for i, leaf in enumerate(leaves) if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.ndim == 2)
    leaves[index] = leaves[index].at[0, 0].set(jnp.nan)
    state = dataclasses.replace(state, opt_state=jax.tree.unflatten(treedef, leaves))
    step_fn = jax.jit(make_train_step(trainer.spec, trainer.tx))
    batch = next(_loader(config, "train"))
    new_state, metrics = step_fn(state, batch)
    assert np.isfinite(float(metrics["loss"])) and int(metrics["nonfinite"]) == 1
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_skipping_is_bounded_and_summarised(tmp_path, caplog):
    config = tiny_smoke_config()
    config.train.num_steps = 8
    config.train.nonfinite = "skip"
    config.train.max_consecutive_skips = 3
    # The parameters overflow after the first update: every later step is non-finite.
    config.optim.levels.default.lr = 1e38
    config.optim.levels.default.warmup_steps = 0
    config.optim.clip_norm = 0.0
    with pytest.raises(NonFiniteLossError, match=r"4 non-finite steps in a row \(steps 2\.\.5.*the last checkpoint"):
        train(config, str(tmp_path))
    # Skipped steps keep the last finite state, which is saved as usual (max_to_keep 3); step 5 stopped the run first.
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3", "4"]


def test_a_save_that_cannot_be_written_stops_the_run_and_keeps_the_earlier_checkpoints(tmp_path, monkeypatch):
    """Disk full at the second save: one error naming the directory, within seconds, the partial directory removed."""
    original_save = ocp.CheckpointManager.save

    def save_until_the_disk_is_full(manager, step, *args, **kwargs):
        if step == 1:
            return original_save(manager, step, *args, **kwargs)
        (pathlib.Path(manager.directory) / f"{step}.orbax-checkpoint-tmp-1234").mkdir()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", save_until_the_disk_is_full)
    config = tiny_smoke_config()
    config.train.num_steps = 3
    start = time.time()
    with pytest.raises(CheckpointWriteError, match=rf"cannot write checkpoint step 2 to {tmp_path}/checkpoints: OSError"):
        train(config, str(tmp_path))
    assert time.time() - start < 120  # no barrier wait: it fails at once (compile included)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
    monkeypatch.undo()
    assert restore_newest_good(tmp_path, build_trainer(config))[0] == 1


def test_a_checkpoint_directory_that_cannot_be_created_is_named_before_anything_is_built(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    config = tiny_smoke_config()
    config.checkpoint.directory = str(blocker / "checkpoints")
    with pytest.raises(CheckpointWriteError, match=f"checkpoint.directory {blocker}/checkpoints is not writable"):
        train(config, str(tmp_path / "run"))


def test_an_unwritable_checkpoint_directory_stops_at_once_naming_it(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(CheckpointWriteError, match=f"{directory} is not writable"):
            train(tiny_smoke_config(), str(tmp_path))
    finally:
        directory.chmod(0o700)
