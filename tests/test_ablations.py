"""Every ablation row changes one factor (configs/ablations/): it differs from its table's base in exactly the config
keys it declares (the factor, plus a declared matching width) and stays within 1% of the base's parameter count at
the pilot tier (issue 18 asks for 5%). Counted with nnx.eval_shape: nothing is allocated, nothing compiled."""

import importlib

import pytest

import hope_jax  # noqa: F401
from hope_jax.models import count_params
from hope_jax.train.checkpoint import flatten_config

TABLES = ("configs.ablations.hope", "configs.ablations.titans")
TOLERANCE = 0.01
ROWS = [(table, row) for table in TABLES for row in importlib.import_module(table).ROWS]


@pytest.fixture(scope="module")
def base_counts():
    return {table: count_params(importlib.import_module(table).get_config("full").model) for table in TABLES}


@pytest.mark.parametrize("table, row", ROWS, ids=[f"{t.rsplit('.', 1)[1]}-{r}" for t, r in ROWS])
def test_row_changes_exactly_its_declared_keys_and_keeps_the_count(table, row, base_counts):
    module = importlib.import_module(table)
    base, ablated = flatten_config(module.get_config("full")), flatten_config(module.get_config(row))
    assert set(ablated) == set(base)
    changed = {key for key in base if base[key] != ablated[key]}
    assert changed == {f"model.{key}" for key in module.ROWS[row].changes()}, row
    count = count_params(module.get_config(row).model)
    assert abs(count / base_counts[table] - 1) <= TOLERANCE, (row, count, base_counts[table])


def test_the_bases_are_the_papers_full_models():
    hope, titans = (importlib.import_module(t).get_config("full").model for t in TABLES)
    assert hope.name == "hope" and hope.memory.adaptive_q  # A-Table 6 ablates "w/o adaptive q" from full HOPE
    assert titans.name == "titans_lmm" and titans.n_persistent_tokens > 0  # T5 ablates persistent memory from LMM
    assert {row for t in TABLES for row in importlib.import_module(t).ROWS} >= {"no_adaptive_q", "no_persistent_memory"}


def test_a_matching_width_follows_the_tier():
    """no_adaptive_k's CMS gives back one static stream's parameters at every tier, to within 1% of the base."""
    module = importlib.import_module("configs.ablations.hope")
    for tier in ("mid", "target"):
        full, ablated = (module.get_config(f"{row},{tier}").model for row in ("full", "no_adaptive_k"))
        assert full.cms.hidden != ablated.cms.hidden
        assert abs(count_params(ablated) / count_params(full) - 1) <= TOLERANCE, tier
