"""The interactive menu, driven in a real pseudo-terminal (pexpect)."""

from __future__ import annotations

import os
import sys

import pexpect
import pytest

from appliance.menu import ITEMS


def _spawn(home, timeout=60):
    env = dict(os.environ, APPLIANCE_HOME=str(home), PYTHONUNBUFFERED="1")
    return pexpect.spawn(sys.executable, ["-m", "appliance.cli", "menu"], env=env,
                         encoding="utf-8", timeout=timeout, dimensions=(40, 160))


def test_menu_lists_items_and_quits(tmp_path):
    child = _spawn(tmp_path)
    child.expect("what would you like to do")
    child.expect(r"choice \[1\]: ")
    screen = child.before
    for title in ("Train", "Chat", "Merge", "Export", "Serve", "Deploy", "Verify", "Quit"):
        assert title in screen
    assert [i.title for i in ITEMS] == ["Train", "Chat", "Merge", "Export", "Serve", "Deploy", "Verify", "Quit"]
    child.sendline("banana")
    child.expect("is not an option")
    child.sendline("q")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_menu_runs_the_cli_command_and_survives_errors(tmp_path):
    child = _spawn(tmp_path)
    child.expect(r"choice \[1\]: ")
    child.sendline("verify")
    child.expect(r"Artifact \(name or folder\)")
    child.sendline("no-such-artifact")
    child.expect(r"\$ appliance verify no-such-artifact")
    child.expect(r"finished with exit code [1-9]")
    child.expect(r"choice \[1\]: ")  # back in the menu after a failed command
    child.sendeof()
    child.expect(pexpect.EOF)


@pytest.mark.slow
def test_enter_through_train_trains_on_the_sample(tmp_path):
    child = _spawn(tmp_path, timeout=900)
    child.expect(r"choice \[1\]: ")
    child.sendline("")  # Train is the default
    for _ in range(5):  # dataset, model, method, steps, run name: all defaults
        child.expect(r"\]?: ")
        child.sendline("")
    child.expect(r"\$ appliance train --dataset sample --model embedded:smollm2-135m-instruct")
    child.expect(r"\[Train finished with exit code 0\]")
    child.sendline("q")
    child.expect(pexpect.EOF)
    runs = [p for p in (tmp_path / "runs").iterdir() if (p / "adapter").is_dir()]
    assert len(runs) == 1
