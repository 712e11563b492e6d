"""Benchmarks: `python -m hope_jax.bench <subcommand>`; one module per subcommand exposing `main(argv)`."""
