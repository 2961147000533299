"""The repository layout keeps the standard library's ``operator`` module importable."""

import importlib
import sys
import sysconfig
from pathlib import Path


def test_stdlib_operator_is_the_standard_library() -> None:
    import operator

    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    origin = getattr(operator, "__file__", None)
    # CPython may serve ``operator`` from the pure-Python stdlib file (backed by _operator).
    assert origin is not None
    assert Path(origin).resolve().parent == stdlib
    assert operator.itemgetter(1)([10, 20]) == 20


def test_operator_package_is_namespaced() -> None:
    repo = Path(__file__).resolve().parents[2]
    assert not (repo / "operator" / "__init__.py").exists()
    mod = importlib.import_module("nasblade_operator")
    assert Path(mod.__file__ or "").resolve().parent == repo / "operator" / "nasblade_operator"
    assert "operator" in sys.stdlib_module_names


def test_cli_lists_roles() -> None:
    from nasblade import cli

    parser = cli.build_parser()
    help_text = parser.format_help()
    for name, command in cli.COMMANDS.items():  # every role, except what only the scripts call
        assert (f"\n  {name} " in help_text) == (command.section != "hidden"), name
