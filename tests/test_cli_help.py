"""Every option of every command has help, each default is shown once, and ``--version``."""
from __future__ import annotations

import argparse

import pytest

from abstain import __version__
from abstain.cli import build_parser, main


def _subparsers():
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_every_option_has_help_and_one_default(name: str) -> None:
    sp = _subparsers()[name]
    missing = [a.option_strings for a in sp._actions if a.option_strings and not a.help]
    assert not missing, f"{name}: options without help: {missing}"
    text = sp.format_help()
    assert "(default: None)" not in text
    for block in text.split("\n  -"):
        assert block.lower().count("(default") <= 1, f"{name}: a default shown twice in {block!r}"


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"abstain {__version__}"
