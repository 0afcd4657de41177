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
