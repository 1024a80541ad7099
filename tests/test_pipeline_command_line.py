"""The command-line format tables (deltamic_core.pipeline.command_line): every declared option
is taken by some subcommand, and an option shared by several subcommands parses the same way
in each (it is declared once)."""

from __future__ import annotations

import argparse

import pytest

from deltamic_core.pipeline.command_line import COMMANDS, OPTIONS, CLIError, build_parser


def _names(entries):
    for e in entries:
        if isinstance(e, str):
            yield from e.split()
        elif e[0] == "group":
            yield from _names(e[3])
        else:
            yield e[0]


def test_every_declared_option_is_used_and_every_used_option_declared():
    used = {n for _, _, entries in COMMANDS.values() for n in _names(entries) if n.startswith("-")}
    assert used | {"--debug"} == set(OPTIONS)


#: the least each subcommand needs (its required arguments)
_BASE = {
    "render": ["M.obj", "--shape", "4", "4", "4", "--spacing", "1", "1", "1", "--out", "o.tif"],
    "fit": ["--out", "o"],
    "track": ["S.tif", "--out", "o"],
    "batch": ["I.tif", "--out", "o"],
    "mechanics": ["M.obj", "--out", "o"],
}


def _sub(parser, name) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


@pytest.mark.parametrize(
    "option, words, value",
    [
        ("--spacing", ["0.5", "0.25", "0.25"], [0.5, 0.25, 0.25]),
        ("--mesh-units", ["voxel"], "voxel"),
        ("--sigma", ["0.6"], [0.6]),
        ("--device", ["cpu"], "cpu"),
    ],
)
def test_a_shared_option_parses_alike_in_every_subcommand(option, words, value):
    parser = build_parser()
    takers = [c for c, (_, _, entries) in COMMANDS.items() if option in set(_names(entries))]
    assert len(takers) >= 2, takers
    dest = option.lstrip("-").replace("-", "_")
    for command in takers:
        sub = _sub(parser, command)
        ns = sub.parse_args([*_BASE[command], option, *words])
        assert getattr(ns, dest) == value, command
        with pytest.raises(CLIError, match=option):
            sub.parse_args([*_BASE[command], option, *(["nonsense"] * len(words) if option != "--device" else [])])
