"""One name and one meaning for a setting across the commands (issue 26, item 7), the
defaults read from the settings dataclasses, and the old names kept as deprecated aliases."""
from __future__ import annotations

import argparse

import pytest

from abstain.abstain_job import CRI_DEFAULTS, AbstainSettings
from abstain.cli import build_parser
from abstain.jobs import CertifySettings, EvaluateSettings

REQUIRED = {
    "evaluate": ["--run", "R", "--eps", "0.1"],
    "certify": ["--run", "R", "--sigma", "0.25", "--eps", "0.1"],
    "abstain": ["--robust", "R", "--core", "C", "--selector", "eri", "--eps", "0.1"],
}


def _parse(command: str, *extra: str) -> argparse.Namespace:
    return build_parser().parse_args([command, *REQUIRED[command], *extra])


@pytest.mark.parametrize("command,option,settings,field", [
    ("evaluate", "steps", EvaluateSettings, "steps"), ("evaluate", "norm", EvaluateSettings, "norm"),
    ("evaluate", "seed", EvaluateSettings, "seed"), ("evaluate", "samples", EvaluateSettings, "samples"),
    ("evaluate", "split", EvaluateSettings, "split"),
    ("certify", "n0", CertifySettings, "n0"), ("certify", "n", CertifySettings, "n"),
    ("certify", "alpha", CertifySettings, "alpha"), ("certify", "samples", CertifySettings, "samples"),
    ("certify", "batch_size", CertifySettings, "batch_size"), ("certify", "seed", CertifySettings, "seed"),
    ("certify", "split", CertifySettings, "split"),
    ("abstain", "steps", AbstainSettings, "steps"), ("abstain", "batch_size", AbstainSettings, "batch_size"),
    ("abstain", "tau_grid", AbstainSettings, "tau_grid"), ("abstain", "seed", AbstainSettings, "seed"),
    ("abstain", "samples", AbstainSettings, "samples"), ("abstain", "split", AbstainSettings, "split"),
])
def test_cli_defaults_are_the_settings_defaults(command, option, settings, field) -> None:
    import dataclasses

    want = {f.name: f.default for f in dataclasses.fields(settings)}[field]
    assert getattr(_parse(command), option) == want


def test_s_cri_defaults_are_shared_by_the_cli_and_the_api() -> None:
    import inspect

    from abstain import api

    args = _parse("abstain")
    assert (args.n0, args.n, args.alpha, args.noise_batch_size) == (
        CRI_DEFAULTS["n0"], CRI_DEFAULTS["n"], CRI_DEFAULTS["alpha"], CRI_DEFAULTS["batch_size"])
    params = inspect.signature(api.compose).parameters
    assert {k: params[k].default for k in ("n0", "n", "alpha")} == {k: CRI_DEFAULTS[k] for k in ("n0", "n", "alpha")}
    assert params["noise_batch_size"].default == CRI_DEFAULTS["batch_size"]


def test_batch_size_means_inputs_and_noise_batch_size_noise_samples() -> None:
    assert _parse("evaluate", "--batch-size", "7").batch_size == 7
    a = _parse("abstain", "--batch-size", "7", "--noise-batch-size", "99")
    assert (a.batch_size, a.noise_batch_size) == (7, 99)
    assert _parse("certify", "--noise-batch-size", "99").batch_size == 99     # CertifySettings.batch_size
    for command in REQUIRED:
        args = _parse(command, "--split", "train", "--samples", "5", "--chunk", "3", "--seed", "4")
        assert (args.split, args.samples, args.chunk, args.seed) == ("train", 5, 3, 4)


@pytest.mark.parametrize("command,old,new,dest", [
    ("abstain", "--eval-batch-size", "--batch-size", "batch_size"),
    ("certify", "--batch-size", "--noise-batch-size", "batch_size"),
])
def test_old_names_still_work_with_a_notice(command, old, new, dest, capsys) -> None:
    args = _parse(command, old, "11")
    assert getattr(args, dest) == 11
    err = capsys.readouterr().err
    assert old in err and new in err and "deprecated" in err
    assert old not in build_parser()._subparsers._group_actions[0].choices[command].format_help()


def test_every_option_of_every_command_has_help() -> None:
    sub = build_parser()._subparsers._group_actions[0]
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and action.help is None:
                pytest.fail(f"abstain {name} {action.option_strings[0]} has no help")
