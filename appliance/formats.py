"""Dataset row formats: detect which one a file uses, and turn each row into chat messages.

Three JSONL formats are understood (one format per file):

    messages   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}        (OpenAI)
    sharegpt   {"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}]}          (ShareGPT / LLaVA)
    alpaca     {"instruction": "...", "input": "...", "output": "...", "system"?: "..."}      (Alpaca)

`parse_row(fmt, row)` returns the normalised messages, or raises `RowError` whose message names the
offending field, e.g. "messages[2].role: 'bot' is not one of system/user/assistant".
"""

from __future__ import annotations

from typing import Any, Callable

FORMATS = ("messages", "sharegpt", "alpaca")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class RowError(ValueError):
    """One row is invalid; the message names the field and what is wrong with it."""


def detect_format(row: Any) -> str | None:
    """The format a parsed JSON row looks like, or None when it matches none."""
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    return None


def parse_row(fmt: str, row: Any) -> list[dict]:
    """Normalised [{"role", "content"}] messages of one row, or RowError naming the bad field."""
    if not isinstance(row, dict):
        raise RowError(f"row is a JSON {type(row).__name__}, expected an object")
    messages = _PARSERS[fmt](row)
    _check_conversation(messages, _turns_field(fmt))
    return messages


def _turns_field(fmt: str) -> str:
    return {"messages": "messages", "sharegpt": "conversations", "alpaca": "output"}[fmt]


def _turn_list(row: dict, key: str, fmt_name: str) -> list:
    if key not in row:
        raise RowError(f"missing '{key}' (this file is in {fmt_name} format; found keys: {', '.join(sorted(row)) or 'none'})")
    turns = row[key]
    if not isinstance(turns, list):
        raise RowError(f"{key}: expected a list of turns, got {type(turns).__name__}")
    if not turns:
        raise RowError(f"{key}: empty list")
    return turns


def _text(value: Any, where: str) -> str:
    """Message content as text; OpenAI content-part lists are joined when they are all text parts."""
    if isinstance(value, list):
        parts = []
        for j, part in enumerate(value):
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RowError(f"{where}[{j}]: only text content parts are supported, got {kind!r}")
        value = "".join(parts)
    if value is None:
        raise RowError(f"{where}: missing")
    if not isinstance(value, str):
        raise RowError(f"{where}: expected a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(f"{where}: empty content")
    return value


def _parse_turns(row: dict, key: str, label: str, role_key: str, content_key: str,
                 roles: dict[str, str], allowed: str) -> list[dict]:
    """Turns under `key`, each {role_key, content_key}, mapped to {"role", "content"} through `roles`."""
    out = []
    for i, m in enumerate(_turn_list(row, key, label)):
        if not isinstance(m, dict):
            raise RowError(f"{key}[{i}]: expected an object with {role_key} and {content_key}, got {type(m).__name__}")
        who = m.get(role_key)
        if who not in roles:
            raise RowError(f"{key}[{i}].{role_key}: {who!r} is not one of {allowed}")
        out.append({"role": roles[who], "content": _text(m.get(content_key), f"{key}[{i}].{content_key}")})
    return out


def _parse_messages(row: dict) -> list[dict]:
    return _parse_turns(row, "messages", "OpenAI messages", "role", "content", {r: r for r in ROLES}, "/".join(ROLES))


def _parse_sharegpt(row: dict) -> list[dict]:
    return _parse_turns(row, "conversations", "ShareGPT", "from", "value", SHAREGPT_ROLES, "system/human/gpt")


def _parse_alpaca(row: dict) -> list[dict]:
    for key in ("instruction", "output"):
        if key not in row:
            raise RowError(f"missing '{key}' (this file is in Alpaca format; found keys: {', '.join(sorted(row)) or 'none'})")
    instruction = _text(row["instruction"], "instruction")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise RowError(f"input: expected a string, got {type(extra).__name__}")
    messages = []
    if row.get("system"):
        messages.append({"role": "system", "content": _text(row["system"], "system")})
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": _text(row["output"], "output")})
    return messages


def _check_conversation(messages: list[dict], field: str) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError(f"{field}: no assistant turn (nothing to learn from)")
    for i, m in enumerate(messages):
        if m["role"] == "system" and i != 0:
            raise RowError(f"{field}[{i}]: a system turn is only allowed first")
    if messages[0]["role"] == "assistant" or (messages[0]["role"] == "system" and messages[1:2] and messages[1]["role"] == "assistant"):
        raise RowError(f"{field}: the conversation starts with an assistant turn; it needs a user turn first")


_PARSERS: dict[str, Callable[[dict], list[dict]]] = {
    "messages": _parse_messages,
    "sharegpt": _parse_sharegpt,
    "alpaca": _parse_alpaca,
}
