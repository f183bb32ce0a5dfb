"""Chat with a run (base + adapter), a model folder, or an OpenAI-compatible server, streaming.

    appliance chat                               # the latest finished run
    appliance chat --run R --prompt "Hi"         # one shot: print the answer and exit
    appliance chat --model merged/R              # a model folder (merged/<run>, HF folder, embedded:...)
    appliance chat --url http://127.0.0.1:8000/v1

The REPL keeps the conversation history; `/reset` forgets it, `/exit` or Ctrl-D leaves. Local models
render prompts with the tokenizer's own chat template, the one training used (the run's adapter/
carries it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, TextIO

from appliance.errors import EngineError, ModelNotFoundError
from appliance.workspace import Workspace

HELP = "commands: /reset (forget the conversation), /exit (or Ctrl-D)"


def run_cli(args: argparse.Namespace, ws: Workspace) -> int:
    if args.url:
        backend = RemoteChat(args.url, api_key=args.api_key or os.environ.get("APPLIANCE_API_KEY"))
    else:
        backend = LocalChat.open(ws, run=args.run, model=args.model)
    if args.prompt is not None:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": args.prompt}]
        for piece in backend.stream(messages, args.max_new_tokens, args.temperature):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    repl(backend, system=args.system, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    return 0


def repl(backend, system: str | None = None, max_new_tokens: int = 256, temperature: float = 0.0,
         read: Callable[[str], str] = input, out: TextIO = sys.stdout) -> list[dict]:
    """Read-eval-print loop with history; returns the conversation when the user leaves."""
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    out.write(f"chatting with {backend.name}. {HELP}\n")
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):  # Ctrl-D / Ctrl-C at the prompt: leave cleanly
            out.write("\n")
            return messages
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return messages
        if text == "/reset":
            messages = list(start)
            out.write("(conversation reset)\n")
            continue
        if text.startswith("/"):
            out.write(f"unknown command {text.split()[0]}; {HELP}\n")
            continue
        messages.append({"role": "user", "content": text})
        out.write("assistant> ")
        reply = []
        try:
            for piece in backend.stream(messages, max_new_tokens, temperature):
                reply.append(piece)
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:  # Ctrl-C while answering stops this answer, not the session
            out.write(" [stopped]")
        out.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply).strip()})


class LocalChat:
    """A transformers model (optionally with a LoRA adapter) that streams its answer."""

    def __init__(self, model, tokenizer, name: str):
        self.model, self.tokenizer, self.name = model, tokenizer, name

    @classmethod
    def open(cls, ws: Workspace, run: str | None = None, model: str | None = None) -> "LocalChat":
        import torch

        from appliance.loading import load_base, load_tokenizer, load_with_adapter

        device = "cuda" if torch.cuda.is_available() else "cpu"
        # fp32 on CPU: bf16 flips near-tied tokens there (FACTS.md)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        if model:
            path = model_folder(model, ws)
            return cls(load_base(path, "lora", dtype, device).eval(), load_tokenizer(path), str(path))
        from appliance.merge import base_of

        run_dir = ws.run_dir(run)
        if not (run_dir / "adapter").is_dir():
            raise ModelNotFoundError(f"run '{run_dir.name}' has no adapter yet",
                                     f"finish it with `appliance train --resume --run-name {run_dir.name}`")
        base_path, _ = base_of(run_dir, ws)
        m = load_with_adapter(base_path, run_dir / "adapter", dtype, device).eval()
        return cls(m, load_tokenizer(run_dir / "adapter"), f"run {run_dir.name}")

    def stream(self, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        from appliance.evaluate import pad_token_id, stop_token_ids

        tok = self.tokenizer
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = tok(text, add_special_tokens=False, return_tensors="pt").to(next(self.model.parameters()).device)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(**inputs, streamer=streamer, max_new_tokens=max_new_tokens,
                      pad_token_id=pad_token_id(self.model, tok), eos_token_id=stop_token_ids(self.model, tok))
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        errors: list[BaseException] = []
        stop = threading.Event()
        kwargs["stopping_criteria"] = [_StopWhenSet(stop)]

        def generate():
            import torch

            try:
                with torch.no_grad():
                    self.model.generate(**kwargs)
            except BaseException as e:  # surface it in the caller's thread
                errors.append(e)
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        try:
            yield from streamer
        finally:  # also when the caller stops early (Ctrl-C): end generation, do not leak the thread
            stop.set()
            worker.join()
        if errors:
            raise errors[0]


class _StopWhenSet:
    """A transformers stopping criterion that ends generation once `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class RemoteChat:
    """An OpenAI-compatible server's /v1/chat/completions, streamed over SSE with httpx."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 300.0):
        import httpx

        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout)
        self.model = model or self._first_model()
        self.name = f"{self.model} at {self.base}"

    def _first_model(self) -> str:
        import httpx

        try:
            r = self.client.get(f"{self.base}/models")
            r.raise_for_status()
            models = r.json().get("data") or []
        except (httpx.HTTPError, ValueError) as e:
            raise EngineError(f"cannot list models at {self.base}/models: {e}", "is the server running? try `appliance serve`") from None
        if not models:
            raise EngineError(f"{self.base} serves no model", "deploy one with `appliance deploy <artifact>`")
        return models[0]["id"]

    def stream(self, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0) -> Iterator[str]:
        import httpx

        body = {"model": self.model, "messages": messages, "max_tokens": max_new_tokens,
                "temperature": temperature, "stream": True}
        try:
            with self.client.stream("POST", f"{self.base}/chat/completions", json=body) as r:
                if r.status_code >= 400:
                    r.read()
                    raise EngineError(f"{self.base} answered {r.status_code}: {_error_message(r)}", "check the model name and the server log")
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    chunk = json.loads(payload)
                    for choice in chunk.get("choices", []):
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            yield piece
        except httpx.HTTPError as e:
            raise EngineError(f"chat request to {self.base} failed: {e}", "is the server running? try `appliance serve`") from None


def _error_message(response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


def model_folder(ref: str, ws: Workspace) -> Path:
    """A model to chat with: merged/<run> (or just <run> when merged), an HF folder, embedded:..."""
    from appliance.models import resolve_model

    for candidate in (Path(ref).expanduser(), ws.home / ref, ws.merged / ref):
        if (candidate / "config.json").is_file():
            return candidate.resolve()
    return resolve_model(ref, ws)
