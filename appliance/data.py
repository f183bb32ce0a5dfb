"""Datasets: read and validate chat JSONL, render it with the model's own chat template, mask the loss.

    report = load_examples_report("train.jsonl")          # format detected per file, every bad row listed
    examples = load_examples("sample")                    # -> list[Example] (messages normalised)
    batch = tokenize_examples(tokenizer, examples, 1024)  # input_ids + labels (-100 outside assistant turns)
    rows = pack(batch.rows, 1024); tensors = collate(rows, tokenizer.pad_token_id, packing=True)

Row formats live in `appliance.formats`, packing and collation in `appliance.packing` (re-exported here).
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, DatasetError
from appliance.formats import FORMATS, RowError, detect_format, parse_row
from appliance.packing import IGNORE, collate, pack  # noqa: F401  (re-exported API)

DATA_DIR = Path(__file__).parent / "data"
SAMPLE_NAME = "sample"
FORMAT_NAMES = {"messages": "OpenAI messages", "sharegpt": "ShareGPT", "alpaca": "Alpaca"}


@dataclass
class Example:
    messages: list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}]
    source: str  # "file.jsonl:LINE"


@dataclass
class LoadReport:
    """What load_examples_report found in one file."""

    path: Path
    format: str
    examples: list[Example]
    total: int  # non-blank rows read
    problems: list[tuple[str, int, str]] = field(default_factory=list)  # (file, line, reason) of bad rows

    @property
    def skipped(self) -> int:
        return len(self.problems)


# ---------------------------------------------------------------------------------------------- files

def resolve_dataset(name_or_path: str | Path) -> Path:
    """'sample' -> the bundled training split; anything else must be an existing file."""
    if str(name_or_path) == SAMPLE_NAME:
        return DATA_DIR / "sample_train.jsonl"
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise ApplianceError(
            f"dataset '{name_or_path}' not found" + (" (it is a directory)" if path.is_dir() else ""),
            "pass a JSONL file (messages, ShareGPT or Alpaca rows), or 'sample' for the bundled demo data",
        )
    return path


def sample_eval_path() -> Path:
    """The held-out split of the bundled sample dataset."""
    return DATA_DIR / "sample_eval.jsonl"


def dataset_digest(path: str | Path) -> str:
    from appliance.models import file_sha256

    return file_sha256(resolve_dataset(path))


def load_examples(path: str | Path, format: str = "auto", skip_invalid: bool = False) -> list[Example]:
    """Validated examples of one JSONL file (see load_examples_report)."""
    return load_examples_report(path, format, skip_invalid).examples


def load_examples_report(path: str | Path, format: str = "auto", skip_invalid: bool = False) -> LoadReport:
    """Read every row, detect (or force) the file's format, validate all rows.

    Bad rows raise one DatasetError listing (file, line, reason) for each of them; with
    `skip_invalid` they are dropped instead and the count is printed and kept in the report.
    """
    path = resolve_dataset(path)
    if format not in ("auto", *FORMATS):
        raise ApplianceError(f"unknown dataset format '{format}'", f"use one of: auto, {', '.join(FORMATS)}")
    rows, problems = _read_jsonl(path)
    total = len(rows) + len(problems)  # parsed rows + lines that are not JSON
    fmt = format if format != "auto" else _detect(path, rows, problems)
    examples = []
    for line, row in rows:
        try:
            examples.append(Example(parse_row(fmt, row), f"{path.name}:{line}"))
        except RowError as e:
            problems.append((str(path), line, str(e)))
    problems.sort(key=lambda p: p[1])
    if problems and not skip_invalid:
        raise DatasetError(problems)
    if problems:
        print(f"skipped {len(problems)} invalid row(s) of {total} in {path}", file=sys.stderr)
    if not examples:
        raise DatasetError(problems or [(str(path), 0, "no rows")], hint="the file holds no usable row")
    return LoadReport(path, fmt, examples, total, problems)


def _read_jsonl(path: Path) -> tuple[list[tuple[int, Any]], list[tuple[str, int, str]]]:
    rows, problems = [], []
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                rows.append((n, json.loads(text)))
            except json.JSONDecodeError as e:
                problems.append((str(path), n, f"line is not valid JSON: {e.msg} at column {e.colno}"))
    return rows, problems


def _detect(path: Path, rows: list[tuple[int, Any]], problems: list) -> str:
    for line, row in rows:
        fmt = detect_format(row)
        if fmt:
            return fmt
    raise DatasetError(
        problems + [(str(path), rows[0][0] if rows else 0, "cannot detect the format: no row has 'messages', "
                     "'conversations' or 'instruction'+'output'")],
        hint="use OpenAI messages, ShareGPT or Alpaca rows (see README), or force one with --format",
    )


def split_eval(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic (seeded) split into (train, eval); eval has round(fraction * n) rows, at least 1 if fraction > 0."""
    if fraction <= 0 or len(examples) < 2:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(examples) - 1, max(1, round(fraction * len(examples))))
    held = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


# ------------------------------------------------------------------------------------- tokenization

@dataclass
class TokenizedSet:
    rows: list[dict]  # {"input_ids", "labels"}
    truncated: int  # examples cut to max_seq_len
    dropped: int  # examples with no assistant token left after truncation


def tokenize_examples(tokenizer, examples: list[Example], max_seq_len: int) -> TokenizedSet:
    """tokenize_example over a list; template failures become one DatasetError naming each row."""
    rows, problems, truncated, dropped = [], [], 0, 0
    for ex in examples:
        try:
            row, cut = _tokenize(tokenizer, ex.messages, max_seq_len)
        except Exception as e:  # the model's chat template rejected this conversation
            problems.append((ex.source.rsplit(":", 1)[0], int(ex.source.rsplit(":", 1)[1]), f"chat template failed: {e}"))
            continue
        truncated += cut
        if all(x == IGNORE for x in row["labels"]):
            dropped += 1
            continue
        rows.append(row)
    if problems:
        raise DatasetError(problems, hint="this model's chat template cannot render these rows; fix or drop them")
    if truncated:
        print(f"truncated {truncated} of {len(examples)} example(s) to max_seq_len={max_seq_len}"
              + (f"; dropped {dropped} with no assistant token left" if dropped else ""), file=sys.stderr)
    return TokenizedSet(rows, truncated, dropped)


def tokenize_example(tokenizer, messages: list[dict], max_seq_len: int) -> dict:
    """{"input_ids", "labels"} of one conversation rendered with the tokenizer's own chat template.

    labels are -100 everywhere except the tokens of every assistant turn: its content and the
    end-of-turn token(s) the template puts after it (e.g. <|im_end|>), not the trailing newline.
    """
    return _tokenize(tokenizer, messages, max_seq_len)[0]


def _tokenize(tokenizer, messages: list[dict], max_seq_len: int) -> tuple[dict, bool]:
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [tid if _inside(start, end, spans) else IGNORE for tid, (start, end) in zip(ids, offsets)]
    cut = len(ids) > max_seq_len
    return {"input_ids": ids[:max_seq_len], "labels": labels[:max_seq_len]}, cut


def _inside(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    """A token belongs to a span when it overlaps it (a token merged across the edge still counts)."""
    return end > start and any(start < b and end > a for a, b in spans)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns.

    Each span is found by rendering prefixes: render(messages[:i], generation prompt) is a prefix of
    render(messages[:i+1]), and the difference is assistant turn i plus the template's end-of-turn
    text (trailing whitespace excluded). Templates that rewrite earlier turns (so prefixes do not
    line up) fall back to locating the content in the full text and extending to the next special token.
    """
    full = render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if upto.startswith(before) and full.startswith(upto):
            start, end = len(before), len(upto.rstrip())
        else:
            start = full.find(m["content"], cursor)
            if start < 0:
                raise ValueError(f"assistant turn {i} does not appear in the rendered conversation")
            end = _end_of_turn(tokenizer, full, start + len(m["content"]))
        spans.append((start, end))
        cursor = end
    return full, spans


def _end_of_turn(tokenizer, text: str, pos: int) -> int:
    """Extend `pos` over whitespace and one special/added token that follows it (the end-of-turn marker)."""
    rest = text[pos:]
    stripped = rest.lstrip()
    markers = set(getattr(tokenizer, "all_special_tokens", [])) | set(tokenizer.get_added_vocab())
    for tok in sorted(markers, key=len, reverse=True):
        if tok and stripped.startswith(tok):
            return pos + (len(rest) - len(stripped)) + len(tok)
    return pos
