"""The layers import one way: cli/ (the ``llmasr`` command) imports flows/, tasks/ and llmasr/; none of
those imports cli/.  Each command's module starts its docstring with the command that runs it."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import cli

REPO = Path(__file__).resolve().parents[1]


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_nothing_below_the_cli_imports_it() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for package in ("llmasr", "tasks", "flows")
        for path in sorted((REPO / package).rglob("*.py"))
        if any(name == "cli" or name.startswith("cli.") for name in _imported(path))
    ]
    assert offenders == []


def test_the_console_script_is_the_cli_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["scripts"]["llmasr"] == "cli:main"
    assert "cli*" in project["tool"]["setuptools"]["packages"]["find"]["include"]


def test_every_command_module_docstring_starts_with_its_command() -> None:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert list(commands) == [m.__name__.removeprefix("cli.").replace("_", "-") for m in cli.COMMANDS]
    for module in cli.COMMANDS:
        name = module.__name__.removeprefix("cli.").replace("_", "-")
        assert (module.__doc__ or "").startswith(f"llmasr {name}"), module.__name__


def test_evaluate_and_run_share_one_test_set_option() -> None:
    """--test-set is one helper (cli.common.test_sets_arg): the same option in both commands."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices

    def option(command: str) -> dict:
        action = next(a for a in commands[command]._actions if "--test-set" in a.option_strings)
        return {k: getattr(action, k) for k in ("dest", "default", "metavar", "help", "option_strings")}

    assert option("evaluate") == option("run")
    assert option("run")["dest"] == "test_sets" and "replaces eval.test_sets" in option("run")["help"]
    args = parser.parse_args(["run", "--test-set", "a=x.tsv", "--test-set", "b=y"])
    assert args.test_sets == ["a=x.tsv", "b=y"]
    assert parser.parse_args(["evaluate"]).test_sets == []
