"""Base configuration: the library's config schema (hope_jax/config_schema.py), every key at its default. Tier files
override a few of them.
"""

import ml_collections

from hope_jax.config_schema import default_config


def get_config() -> ml_collections.ConfigDict:
    return default_config()
