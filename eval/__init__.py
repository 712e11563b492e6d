import os as _os

# Before jax loads (its import sets TF_CPP_MIN_LOG_LEVEL=1 if unset, which would pre-empt ours): the level of
# hope_jax/log_setup.py's quiet_tensorflow, a user's value kept. Set here, not by importing hope_jax, so that importing
# eval.lm_eval_adapter stays free of jax.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
