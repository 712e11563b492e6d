"""`python -m hope_jax.bench <subcommand> [args]`: benchmarks that print numbers (never timed tests).

Each subcommand lives in its own module hope_jax/bench/<name>.py exposing `main(argv: list[str]) -> None`; this
dispatcher imports only the module that is asked for, so a subcommand's heavy imports never slow the others.
"""

import importlib
import pkgutil
import sys

import hope_jax.bench as bench_package


def available_subcommands() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(bench_package.__path__) if not info.name.startswith("_"))


def main(argv: list[str]) -> None:
    names = available_subcommands()
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m hope_jax.bench {{{','.join(names)}}} [args]")
        return
    name, rest = argv[0], argv[1:]
    if name not in names:
        raise SystemExit(f"unknown bench subcommand {name!r}; available: {', '.join(names)}")
    importlib.import_module(f"hope_jax.bench.{name}").main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
