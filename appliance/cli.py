"""The `appliance` command: one table of subcommands, each mapped to a handler `fn(args, ws) -> int`.

Handlers live next to the library code they call (`appliance.train:run_cli`, `export.cli:export_cli`,
...) and are imported only when their command runs, so `appliance --help` stays instant. Errors
derived from `ApplianceError` print the message and what to do next, and exit non-zero without a
traceback; anything else is a bug and keeps its traceback.

    from appliance.cli import main
    main(["train", "--set", "max_steps=5"])
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from appliance import __version__


@dataclass(frozen=True)
class Command:
    help: str
    handler: str  # "module:function", imported lazily
    add_args: Callable[[argparse.ArgumentParser], None]
    issue: int | None = None  # the issue that delivers it (shown when the handler is missing)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="YAML", help="config file (keys documented by --help-config)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override one config key, e.g. --set lr=1e-4 (repeatable)")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and meaning")


def _train_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--model", help="base model (default embedded:smollm2-135m-instruct)")
    p.add_argument("--dataset", help="training JSONL (default: the bundled sample)")
    p.add_argument("--eval-dataset", help="held-out JSONL")
    p.add_argument("--format", choices=["auto", "messages", "sharegpt", "alpaca"], help="dataset format (default auto)")
    p.add_argument("--skip-invalid", action="store_true", default=None, help="drop invalid rows and report how many")
    p.add_argument("--run-name", help="name of the run directory")
    p.add_argument("--method", choices=["auto", "qlora", "lora"], help="qlora (4-bit base) or lora")
    p.add_argument("--max-steps", type=int, help="optimizer steps to run")
    p.add_argument("--packing", action="store_true", default=None, help="pack examples (no cross-attention between them)")
    p.add_argument("--gpus", type=int, help="train on N GPUs with FSDP + QLoRA (accelerate)")
    p.add_argument("--resume", action="store_true", help="continue the run named by --run-name (or the latest) from its last checkpoint")


def _chat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="run whose adapter to chat with (default: latest run)")
    p.add_argument("--model", help="a model instead: HF folder, merged/<run>, or embedded:...")
    p.add_argument("--url", help="chat with a server instead (OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1)")
    p.add_argument("--api-key", help="API key for --url (default $APPLIANCE_API_KEY)")
    p.add_argument("--prompt", help="one-shot: answer this and exit")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")


def _run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="run name (default: the latest finished run)")


def _merge_args(p: argparse.ArgumentParser) -> None:
    _run_arg(p)
    p.add_argument("--force", action="store_true", help="overwrite an existing merged/<run>/")


def _eval_args(p: argparse.ArgumentParser) -> None:
    _run_arg(p)
    p.add_argument("--model", help="score a model folder instead (HF, merged/<run>, embedded:...)")
    p.add_argument("--dataset", help="held-out JSONL (default: the run's eval split)")
    p.add_argument("--limit", type=int, help="score at most N rows")


def _export_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    _run_arg(p)
    p.add_argument("--format", dest="formats", help="comma-separated: gguf:q4_k_m,gguf:q8_0,gguf:f16,awq,gptq")
    p.add_argument("--model", help="export a model folder instead of merged/<run> (e.g. the embedded base)")
    p.add_argument("--name", help="artifact name prefix (default: the run name)")
    p.add_argument("--force", action="store_true", help="replace existing artifacts of the same name")


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="artifact directory (or a name under artifacts/)")
    p.add_argument("--public-key", action="append", default=[], metavar="PEM",
                   help="trusted public key (repeatable; default: workspace keys/ and trust/)")


def _keys_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--export", metavar="PATH", help="write the public key (PEM) to PATH")
    p.add_argument("--trust", metavar="PEM", help="add a public key to trust/ (accepted for deploy and verify)")


def _serve_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--artifact", help="artifact to serve first (name under artifacts/)")
    g.add_argument("--run", help="serve merged/<run> (unsigned, local only)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="gateway URL (default http://127.0.0.1:8000 or $APPLIANCE_URL)")
    p.add_argument("--token", default=None, help="admin token (default $APPLIANCE_ADMIN_TOKEN)")


def _deploy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", nargs="?", help="artifact name to deploy")
    p.add_argument("--adapter", metavar="RUN", help="load RUN's LoRA adapter into the running vLLM engine instead")
    p.add_argument("--no-wait", action="store_true", help="return the deployment id without waiting")
    _client_args(p)


def _pull_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="artifact URL, e.g. http://host:8000/artifacts/<name>")
    p.add_argument("--out", help="destination folder (default ./<name>)")
    p.add_argument("--public-key", action="append", default=[], metavar="PEM", help="trusted signer key (repeatable)")


def _none(p: argparse.ArgumentParser) -> None:
    pass


COMMANDS: dict[str, Command] = {
    "train": Command("fine-tune a model (QLoRA / LoRA) on a JSONL chat dataset", "appliance.train:run_cli", _train_args, 2),
    "chat": Command("chat with a run, a model folder, or a server (streaming)", "appliance.chat:run_cli", _chat_args, 2),
    "eval": Command("score a run's base and fine-tuned model on the held-out split", "appliance.evaluate:run_cli", _eval_args, 2),
    "merge": Command("merge a run's adapter into its 16-bit base -> merged/<run>/", "appliance.merge:run_cli", _merge_args, 2),
    "export": Command("export merged/<run> to signed GGUF / AWQ / GPTQ artifacts", "export.cli:export_cli", _export_args, 3),
    "verify": Command("check an artifact's signature and every file digest", "export.cli:verify_cli", _verify_args, 3),
    "keys": Command("show, export or trust signing keys", "export.cli:keys_cli", _keys_args, 3),
    "serve": Command("start the OpenAI-compatible gateway and its engine", "serve.cli:serve_cli", _serve_args, 4),
    "deploy": Command("hot-swap an artifact (or a LoRA adapter) into a running gateway", "serve.cli:deploy_cli", _deploy_args, 4),
    "rollback": Command("return a running gateway to the previous artifact", "serve.cli:rollback_cli", _client_args, 4),
    "pull": Command("download an artifact with resume and verify it", "serve.cli:pull_cli", _pull_args, 4),
    "status": Command("list runs, merged models and artifacts in the workspace", "appliance.cli:status_cli", _none),
    "menu": Command("the interactive menu (what `bash bootstrap.sh` opens)", "appliance.menu:run_cli", _none),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Train-to-serve appliance: fine-tune, merge, export (signed GGUF/AWQ/GPTQ), serve with hot-swap.",
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument("--home", metavar="DIR", help="workspace folder (default $APPLIANCE_HOME or ./workspace)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, parents=[home])
        cmd.add_args(p)
    return parser


def resolve_handler(name: str) -> Callable | None:
    """The handler function of a command, or None when its module has not landed yet."""
    module, func = COMMANDS[name].handler.split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module or module.startswith(e.name + ".") or e.name.startswith(module)):
            return None
        raise
    return getattr(mod, func, None)


def main(argv: Sequence[str] | None = None) -> int:
    from appliance.errors import ApplianceError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    handler = resolve_handler(args.command)
    if handler is None:
        issue = COMMANDS[args.command].issue
        print(f"appliance {args.command}: not available in this version yet"
              + (f" (it lands with issue #{issue})." if issue else "."), file=sys.stderr)
        return 3
    try:
        from appliance.workspace import Workspace

        ws = Workspace.open(args.home)
        return int(handler(args, ws) or 0)
    except ApplianceError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  -> {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def status_cli(args: argparse.Namespace, ws) -> int:
    print(f"workspace: {ws.home}")
    for title, names in (("runs", ws.list_runs()),
                         ("merged", sorted(p.name for p in ws.merged.iterdir() if p.is_dir() and not p.name.startswith(".")) if ws.merged.is_dir() else []),
                         ("artifacts", ws.list_artifacts())):
        print(f"{title}: {', '.join(names) if names else '(none)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
