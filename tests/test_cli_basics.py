import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "abstain", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_commands():
    r = _run("--help")
    assert r.returncode == 0
    assert "COMMAND" in r.stdout


def test_no_command_exits_nonzero():
    assert _run().returncode != 0


def test_out_of_memory_becomes_a_batch_size_hint(monkeypatch, capsys):
    from abstain import cli
    from abstain.commands import evaluate

    def boom(args):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(evaluate, "run", boom)
    assert cli.main(["evaluate", "--run", "x", "--eps", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "out of memory" in err and "--batch-size" in err and "Traceback" not in err


def test_other_runtime_errors_are_not_hidden(monkeypatch):
    import pytest

    from abstain import cli
    from abstain.commands import evaluate

    def boom(args):
        raise RuntimeError("shape mismatch in a bug")

    monkeypatch.setattr(evaluate, "run", boom)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        cli.main(["evaluate", "--run", "x", "--eps", "0.1"])
