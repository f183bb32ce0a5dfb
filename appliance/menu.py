"""The interactive menu that `bash bootstrap.sh` opens.

It only gathers answers and then runs the same command table as the CLI (`appliance.cli.main`),
so every menu action is also a command line, which the menu prints before running it. Every
question has a default: pressing Enter through Train trains the embedded model on the sample data.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from typing import Callable

from appliance.config import DEFAULT_MODEL


@dataclass(frozen=True)
class Item:
    key: str
    title: str
    command: str | None  # the CLI command it runs (None = Quit)
    ask: Callable[["Asker"], list[str]] | None = None


class Asker:
    """Questions with defaults; EOF (Ctrl-D) anywhere means 'take the default'."""

    def __init__(self, ws, input_fn=input, out=sys.stdout):
        self.ws = ws
        self.input = input_fn
        self.out = out

    def ask(self, question: str, default: str = "") -> str:
        shown = f" [{default}]" if default else ""
        try:
            answer = self.input(f"{question}{shown}: ").strip()
        except EOFError:
            answer = ""
        return answer or default


def _latest(names: list[str]) -> str:
    return names[-1] if names else ""


def _ask_train(a: Asker) -> list[str]:
    argv = ["train"]
    dataset = a.ask("Dataset (JSONL file, or 'sample')", "sample")
    model = a.ask("Base model (HF folder, hub id, or embedded:...)", DEFAULT_MODEL)
    method = a.ask("Method: auto | qlora | lora", "auto")
    steps = a.ask("Optimizer steps (-1 = one epoch)", "-1")
    name = a.ask("Run name (empty = automatic)", "")
    argv += ["--dataset", dataset, "--model", model, "--method", method, "--max-steps", steps]
    return argv + (["--run-name", name] if name else [])


def _ask_run(a: Asker) -> list[str]:
    run = a.ask("Run", _latest(a.ws.list_runs()) or "latest")
    return [] if run == "latest" else ["--run", run]


def _ask_chat(a: Asker) -> list[str]:
    argv = ["chat"] + _ask_run(a)
    prompt = a.ask("One question (empty = interactive chat, /exit to leave)", "")
    return argv + (["--prompt", prompt] if prompt else [])


def _ask_merge(a: Asker) -> list[str]:
    return ["merge"] + _ask_run(a)


def _ask_export(a: Asker) -> list[str]:
    argv = ["export"] + _ask_run(a)
    return argv + ["--format", a.ask("Formats (gguf:q4_k_m, gguf:q8_0, gguf:f16, awq, gptq)", "gguf:q4_k_m")]


def _ask_serve(a: Asker) -> list[str]:
    artifact = a.ask("Artifact to serve", _latest(a.ws.list_artifacts()))
    port = a.ask("Port", "8000")
    return ["serve", "--port", port] + (["--artifact", artifact] if artifact else [])


def _ask_deploy(a: Asker) -> list[str]:
    artifact = a.ask("Artifact to deploy", _latest(a.ws.list_artifacts()))
    url = a.ask("Gateway URL", "http://127.0.0.1:8000")
    return ["deploy", artifact, "--url", url]


def _ask_verify(a: Asker) -> list[str]:
    return ["verify", a.ask("Artifact (name or folder)", _latest(a.ws.list_artifacts()))]


ITEMS = [
    Item("1", "Train", "train", _ask_train),
    Item("2", "Chat", "chat", _ask_chat),
    Item("3", "Merge", "merge", _ask_merge),
    Item("4", "Export", "export", _ask_export),
    Item("5", "Serve", "serve", _ask_serve),
    Item("6", "Deploy", "deploy", _ask_deploy),
    Item("7", "Verify", "verify", _ask_verify),
    Item("q", "Quit", None),
]


def run_menu(ws, input_fn=input, out=sys.stdout) -> int:
    from appliance import cli

    asker = Asker(ws, input_fn, out)
    home = ["--home", str(ws.home)]
    while True:
        print("\nappliance: what would you like to do?", file=out)
        for item in ITEMS:
            missing = item.command and cli.resolve_handler(item.command) is None
            note = f"  (not available yet: lands with issue #{cli.COMMANDS[item.command].issue})" if missing else ""
            print(f"  {item.key}) {item.title}{note}", file=out)
        try:
            choice = input_fn("choice [1]: ").strip().lower() or "1"
        except EOFError:
            print(file=out)
            return 0
        item = next((i for i in ITEMS if choice in (i.key, i.title.lower())), None)
        if item is None:
            print(f"'{choice}' is not an option; type a number or a name.", file=out)
            continue
        if item.command is None:
            return 0
        if cli.resolve_handler(item.command) is None:
            print(f"{item.title} is not available in this version yet "
                  f"(it lands with issue #{cli.COMMANDS[item.command].issue}).", file=out)
            continue
        argv = item.ask(asker)
        print(f"\n$ appliance {shlex.join(argv)}", file=out, flush=True)
        try:
            code = cli.main(argv[:1] + home + argv[1:])
        except SystemExit as e:  # argparse rejected an answer
            code = e.code if isinstance(e.code, int) else 2
        except Exception:  # a bug: show it, keep the menu alive
            import traceback

            traceback.print_exc()
            code = 1
        print(f"[{item.title} finished with exit code {code}]", file=out, flush=True)


def run_cli(args: argparse.Namespace, ws) -> int:
    return run_menu(ws)
