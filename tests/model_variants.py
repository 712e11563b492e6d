"""Tiny configurations of every registered model, on which tests/test_models.py runs every property test (overrides
of its tiny base config). A registered model without an entry here fails test_every_registered_model_has_variants."""

TINY_MEMORY = {"chunk_size": 8, "aux_chunk_size": 4}
TINY_CMS = {"periods": (4, 8, 0), "objectives": ("local", "local", "frozen"), "hidden": (32, 32, 32)}
TINY_TITANS = {"chunk_size": 4, "segment_size": 8}

MODEL_VARIANTS = {
    "hope": {
        "default": {"memory": TINY_MEMORY, "cms": TINY_CMS},
        "ablations_nested_bf16": {
            "memory": {**TINY_MEMORY, "adaptive_q": True, "adaptive_k": False, "momentum": False, "dgd": False},
            "cms": {**TINY_CMS, "variant": "nested"},
            "compute_dtype": "bfloat16",
            "remat": "full",
            "n_layers": 1,
        },
    },
    "hope_attention": {
        "independent_window": {"cms": {**TINY_CMS, "variant": "independent"}, "attention_window": 6, "n_layers": 1},
        # CMS `lm` objective (models/lm_ttt.py): two test-time-trained levels (periods 4 and 8) and a frozen one. On
        # HOPE-Attention because the chunked TTT differentiates the whole model per chunk, which compiles ~4x faster
        # without the self-modifying mixer (the driver is model-agnostic: it only runs the blocks' stateful path).
        "lm": {"cms": {**TINY_CMS, "objectives": ("lm", "lm", "frozen"), "inner_lr": 0.5}, "n_layers": 1},
    },
    # Two persistent tokens on chunks of 4: the prefix ends inside the first chunk, and pieces continue it.
    "titans_lmm": {"default": {"titans": TINY_TITANS, "n_layers": 1, "n_persistent_tokens": 2}},
    "titans_mag": {
        "default": {"titans": TINY_TITANS, "n_layers": 1, "attention_window": 6, "n_persistent_tokens": 2},
    },
    "titans_mac": {
        "default": {"titans": {**TINY_TITANS, "memory_depth": 1}, "n_layers": 1, "n_persistent_tokens": 2},
    },
    "transformer": {
        "full": {},
        "window_persistent": {"attention_window": 5, "n_persistent_tokens": 2},
        "tied_bf16_remat": {"tie_embeddings": True, "compute_dtype": "bfloat16", "remat": "dots_saveable"},
    },
}
