"""Every option of every command explains itself in --help, and every --help renders.

The superserve subcommands are checked on their real parsers (nested subcommands included); the benchmark scripts,
whose imports may need peer packages, are checked on their source: each `add_argument` carries a help text that
argparse can format (a stray '%' would crash `--help` at run time).
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path

import pytest

from superserve.cli import SUBCOMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(ROOT.glob("benchmarks/*.py")) + [ROOT / "superserve" / "server" / "profiling.py"]


def _parsers(parser: argparse.ArgumentParser, path: str):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    return [a.option_strings[0] for a in parser._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction)
            and a.help != argparse.SUPPRESS and not (a.help or "").strip()]


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_option_has_help_and_help_renders(command):
    top = build_parser(command)
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    seen = 0
    for path, parser in _parsers(sub, command):
        assert _undocumented(parser) == [], f"superserve {path}: options without help"
        assert parser.format_help().startswith("usage:")
        seen += 1
    assert seen >= 1


def test_the_check_catches_an_undocumented_option():
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    assert _undocumented(p) == ["--seed"]


def _help_texts(source: str):
    """(line, option, help constant or None) of each add_argument call; f-string helps count as documented."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            option = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else "?"
            help_kw = next((k.value for k in node.keywords if k.arg == "help"), None)
            if help_kw is None:
                yield node.lineno, option, None
            elif isinstance(help_kw, ast.Constant):
                yield node.lineno, option, help_kw.value
            else:
                yield node.lineno, option, ""  # f-string or expression: present, format not checkable here


class _AnyKey(defaultdict):
    def __missing__(self, key):  # argparse fills %(default)s, %(prog)s, ...; any name renders
        return "x"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_option_has_a_formattable_help(script):
    problems = []
    for line, option, text in _help_texts(script.read_text()):
        if text is None:
            problems.append(f"{script.name}:{line} {option}: no help")
        elif text:
            try:
                text % _AnyKey()
            except (ValueError, TypeError) as exc:
                problems.append(f"{script.name}:{line} {option}: {exc}")
    assert problems == []


def test_the_script_check_catches_a_missing_help_and_a_stray_percent():
    src = ('p.add_argument("--a", type=int)\n'
           'p.add_argument("--b", help="95% of calls")\n'
           'p.add_argument("--c", help="(default %(default)s)")\n')
    found = list(_help_texts(src))
    assert found[0][2] is None
    with pytest.raises((ValueError, TypeError)):
        found[1][2] % _AnyKey()
    assert found[2][2] % _AnyKey() == "(default x)"
