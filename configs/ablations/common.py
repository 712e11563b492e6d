"""Ablation configs: one row of a paper's ablation table = one model and a few switches on top of a tier config."""

from configs import tiers


def ablation_config(rows: dict[str, tuple[str, dict]], arg: str):
    """`arg` is '<row>' or '<row>,<tier>' (tier default pilot); a row is (model name, {dotted model key: value})."""
    row, _, tier = arg.partition(",")
    if row not in rows:
        raise ValueError(f"unknown ablation row {row!r}; known: {', '.join(rows)}")
    model, switches = rows[row]
    config = tiers.tier_config(tier or "pilot", model)
    for dotted, value in switches.items():
        *sections, key = dotted.split(".")
        node = config.model
        for section in sections:
            node = node[section]
        if key not in node:
            raise KeyError(f"ablation row {row!r} sets model.{dotted}, which is not a config key")
        node[key] = value
    return config
