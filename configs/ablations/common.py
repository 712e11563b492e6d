"""Ablation configs: one table of a paper = one base model on a tier, and one row = one factor switched on top of it.

A row changes the factor under test (`switches`) and nothing else. Where the factor swaps a part for one of another
size (a static projection for a generator memory, one MLP for the CMS chain), `matching` names the width that gives
the count back, in a part the factor does not touch; a row that only removes the factor's own weights (M_α for 'w/o
weight decay', a memory layer for 'linear memory', the persistent tokens) is smaller by those (≤ 1.1% at every tier).
tests/test_ablations.py holds every row within 1% of its table's base at the pilot tier and checks that the config
keys a row changes are exactly the ones it declares.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from configs import tiers

# A value, or a function of the table's base model config (its tier's widths) returning the value.
Value = Any | Callable[[ml_collections.ConfigDict], Any]


@dataclasses.dataclass(frozen=True)
class Row:
    switches: Mapping[str, Value] = dataclasses.field(default_factory=dict)  # the factor: {dotted model key: value}
    matching: Mapping[str, Value] = dataclasses.field(default_factory=dict)  # the width that keeps the count

    def changes(self) -> dict[str, Value]:
        return {**self.switches, **self.matching}


@dataclasses.dataclass(frozen=True)
class Table:
    model: str
    base: Mapping[str, Value]  # what every row shares on top of the tier preset: the table's full model
    rows: Mapping[str, Row]


def ablation_config(table: Table, arg: str) -> ml_collections.ConfigDict:
    """`arg` is '<row>' or '<row>,<tier>' (tier default pilot)."""
    row, _, tier = arg.partition(",")
    if row not in table.rows:
        raise ValueError(f"unknown ablation row {row!r}; known: {', '.join(table.rows)}")
    config = tiers.tier_config(tier or "pilot", table.model)
    _set(config.model, table.base, "the table's base")
    base_model = ml_collections.ConfigDict(config.model.to_dict())  # what a matching width is computed from
    changes = {key: value(base_model) if callable(value) else value for key, value in table.rows[row].changes().items()}
    _set(config.model, changes, f"ablation row {row!r}")
    return config


def _set(model: ml_collections.ConfigDict, values: Mapping[str, Any], what: str) -> None:
    for dotted, value in values.items():
        *sections, key = dotted.split(".")
        node = model
        for section in sections:
            node = node[section]
        if key not in node:
            raise KeyError(f"{what} sets model.{dotted}, which is not a config key")
        node[key] = value
