"""The libraries do not import the applications: hope_jax and data_pipeline never import configs/, eval/, launch/ or
tests/, and eval/ rebuilds configs from the library's schema, not from configs/. Checked on the import statements of
every source file (ast), so a late import inside a function counts too."""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "hope_jax": {"configs", "eval", "launch", "tests"},
    "data_pipeline": {"configs", "eval", "launch", "tests"},
    "eval": {"configs", "launch", "tests"},
}


def imported_top_level_packages(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_the_applications(package):
    sources = sorted((REPO / package).rglob("*.py"))
    assert sources, f"no sources under {package}/"
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_top_level_packages(path) & FORBIDDEN[package]) for path in sources
    }
    assert not {path: names for path, names in offenders.items() if names}


def test_the_checker_sees_a_late_import(tmp_path):
    source = tmp_path / "late.py"
    source.write_text("def f():\n    from configs import base\n    import eval.common\n")
    assert imported_top_level_packages(source) == {"configs", "eval"}
