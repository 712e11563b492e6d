"""Named model sizes mean what they say (DESIGN D8), counted with nnx.eval_shape: nothing is allocated."""

import pytest

import hope_jax  # noqa: F401
from hope_jax.models import PRESETS, count_params, flops_per_token, known_models, model_preset
from hope_jax.models.config import apply_overrides, default_model_config


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_within_ten_percent_of_label(preset):
    cfg = model_preset(preset)
    assert cfg.name in known_models(), f"preset {preset} names an unregistered model {cfg.name!r}"
    label = PRESETS[preset].label_params
    assert abs(count_params(cfg) - label) <= 0.1 * label, (preset, count_params(cfg), label)


def transformer_params_by_hand(cfg) -> int:
    d, v = cfg.d_model, cfg.vocab_size
    per_layer = 4 * d * d + 3 * d * cfg.mlp_hidden + 2 * d  # q, k, v, o; SwiGLU; two norm scales
    persistent = 2 * cfg.n_persistent_tokens * d
    embeddings = v * d * (1 if cfg.tie_embeddings else 2)
    return cfg.n_layers * (per_layer + persistent) + d + embeddings


@pytest.mark.parametrize(
    "overrides", [{}, {"tie_embeddings": True, "n_persistent_tokens": 3}], ids=["untied", "tied_persistent"]
)
def test_transformer_count_matches_hand_count(overrides):
    cfg = apply_overrides(model_preset("transformer-160m"), overrides)
    assert count_params(cfg) == transformer_params_by_hand(cfg)


def test_transformer_flops_per_token():
    cfg = apply_overrides(
        default_model_config(),
        dict(vocab_size=100, d_model=8, n_layers=3, n_heads=2, mlp_hidden=12, attention_window=2),
    )
    flops = flops_per_token(cfg, seq_len=4)
    assert flops["dense"] == 6 * (3 * (4 * 64 + 3 * 8 * 12) + 8 * 100)
    assert flops["attention"] == 3 * 12 * 8 * (1 + 2 + 2 + 2) / 4  # window 2: 1, 2, 2, 2 keys
    assert flops["inner"] == 0
    assert flops["total"] == flops["dense"] + flops["attention"]
