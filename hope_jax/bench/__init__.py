"""Benchmarks: `python -m hope_jax.bench <subcommand>` runs hope_jax/bench/<subcommand>.py."""
