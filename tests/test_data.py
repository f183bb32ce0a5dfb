"""Datasets: format detection, validation reports, assistant-only masks, contamination-free packing."""

from __future__ import annotations

import json

import pytest

from appliance.data import (
    IGNORE,
    assistant_spans,
    collate,
    dataset_digest,
    load_examples,
    load_examples_report,
    pack,
    resolve_dataset,
    sample_eval_path,
    split_eval,
    tokenize_example,
    tokenize_examples,
)
from appliance.errors import ApplianceError, DatasetError

CONVO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, of course."},
]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------- formats

def test_each_format_is_detected_and_normalised(tmp_path):
    messages = write_jsonl(tmp_path / "m.jsonl", [{"messages": CONVO}])
    sharegpt = write_jsonl(tmp_path / "s.jsonl", [{"conversations": [
        {"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]} for m in CONVO]}])
    alpaca = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        {"instruction": "Say hi.", "input": "", "output": "hi", "system": "Be brief."},
    ])
    assert load_examples_report(messages).format == "messages"
    assert load_examples_report(sharegpt).format == "sharegpt"
    assert load_examples_report(alpaca).format == "alpaca"
    assert load_examples(messages)[0].messages == CONVO
    assert load_examples(sharegpt)[0].messages == CONVO
    a = load_examples(alpaca)
    assert a[0].messages == [{"role": "user", "content": "Translate to French.\n\ncat"}, {"role": "assistant", "content": "chat"}]
    assert a[1].messages[0] == {"role": "system", "content": "Be brief."}
    assert a[1].source == "a.jsonl:2"


def test_forced_format_reports_the_missing_field(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": CONVO}])
    with pytest.raises(DatasetError) as e:
        load_examples(path, format="alpaca")
    assert e.value.problems == [(str(path), 1, e.value.problems[0][2])]
    assert "missing 'instruction'" in e.value.problems[0][2]


def test_every_bad_row_is_reported_at_once_with_line_and_field(tmp_path):
    good = {"messages": CONVO}
    path = write_jsonl(tmp_path / "bad.jsonl", [
        good,
        {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]},
        '{"messages": [',
        "",  # blank lines are ignored, and do not shift line numbers
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]},
        {"messages": "hello"},
        [1, 2],
        {"prompt": "x", "completion": "y"},
        good,
    ])
    with pytest.raises(DatasetError) as e:
        load_examples(path)
    by_line = {line: why for f, line, why in e.value.problems}
    assert {f for f, _, _ in e.value.problems} == {str(path)}
    assert sorted(by_line) == [2, 3, 5, 6, 7, 8, 9]
    assert "messages[1].role: 'bot' is not one of system/user/assistant" in by_line[2]
    assert by_line[3].startswith("line is not valid JSON")
    assert "no assistant turn" in by_line[5]
    assert "messages[0].content: empty content" in by_line[6]
    assert "messages: expected a list" in by_line[7]
    assert "expected an object" in by_line[8]
    assert "missing 'messages'" in by_line[9]
    assert f"{path}:2:" in str(e.value) and e.value.hint  # the CLI shows file:line: reason and what to do


def test_skip_invalid_drops_bad_rows_and_counts_them(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "hello"}]},
        {"conversations": [{"from": "gpt", "value": "I speak first"}, {"from": "human", "value": "ok"}]},
        {"conversations": [{"from": "human", "value": "bye"}, {"from": "gpt", "value": "bye!"}]},
    ])
    report = load_examples_report(path, skip_invalid=True)
    assert [e.source for e in report.examples] == ["d.jsonl:1", "d.jsonl:4"]
    assert (report.skipped, report.total) == (2, 4)
    assert f"skipped 2 invalid row(s) of 4 in {path}" in capsys.readouterr().err
    with pytest.raises(DatasetError) as e:
        load_examples(path)
    assert "conversations[1].from: 'robot'" in e.value.problems[0][2]
    assert "starts with an assistant turn" in e.value.problems[1][2]


def test_undetectable_file_and_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="cannot detect the format"):
        load_examples(write_jsonl(tmp_path / "x.jsonl", [{"text": "hello"}]))
    with pytest.raises(ApplianceError, match="not found"):
        resolve_dataset(tmp_path / "nope.jsonl")


def test_sample_dataset_has_a_held_out_split_with_unseen_cities():
    train, held = load_examples("sample"), load_examples(sample_eval_path())
    assert resolve_dataset("sample").name == "sample_train.jsonl" and len(train) >= 200 and len(held) >= 30
    city = lambda ex: json.loads(ex.messages[-1]["content"])["city"]  # noqa: E731
    assert not {city(e) for e in held} & {city(e) for e in train}
    assert len(dataset_digest("sample")) == 64 and dataset_digest("sample") != dataset_digest(sample_eval_path())


def test_split_eval_is_seeded_and_disjoint():
    examples = load_examples("sample")
    train, held = split_eval(examples, 0.1, seed=3)
    assert len(held) == round(0.1 * len(examples)) and len(train) + len(held) == len(examples)
    assert {e.source for e in train}.isdisjoint(e.source for e in held)
    assert [e.source for e in split_eval(examples, 0.1, seed=3)[1]] == [e.source for e in held]
    assert [e.source for e in split_eval(examples, 0.1, seed=4)[1]] != [e.source for e in held]
    assert split_eval(examples, 0.0, seed=3) == (examples, [])


# -------------------------------------------------------------------------------- tokenization

@pytest.fixture(scope="module")
def tokenizer(base_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


def unmasked_text(tokenizer, row):
    return tokenizer.decode([t for t in row["labels"] if t != IGNORE])


def test_masks_cover_exactly_the_assistant_turns_with_the_models_template(tokenizer):
    row = tokenize_example(tokenizer, CONVO, 512)
    rendered = tokenizer.apply_chat_template(CONVO, tokenize=False)
    assert tokenizer.decode(row["input_ids"]) == rendered  # the embedded model's own ChatML template
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert unmasked_text(tokenizer, row) == "Paris.<|im_end|>Rome, of course.<|im_end|>"
    assert len(row["labels"]) == len(row["input_ids"])
    assert all(lab in (IGNORE, tid) for lab, tid in zip(row["labels"], row["input_ids"]))


def test_masks_follow_a_different_template(tokenizer):
    tok = _with_template(tokenizer, "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|endoftext|>\n{% endfor %}"
                                    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    row = tokenize_example(tok, CONVO, 512)
    assert unmasked_text(tok, row) == "Paris.<|endoftext|>Rome, of course.<|endoftext|>"


def test_masks_when_prefixes_do_not_line_up(tokenizer):
    # A template that marks the last turn differently: rendering prefixes cannot be diffed, so the
    # content is located in the full text and extended to the end-of-turn token.
    tok = _with_template(tokenizer, "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>"
                                    "{% if loop.last %}<|endoftext|>{% endif %}\n{% endfor %}"
                                    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    text, spans = assistant_spans(tok, CONVO)
    assert [text[a:b] for a, b in spans] == ["Paris.<|im_end|>", "Rome, of course.<|im_end|>"]


def _with_template(tokenizer, template):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


def test_truncation_is_counted(tokenizer, capsys):
    examples = load_examples("sample")[:3]
    full = tokenize_examples(tokenizer, examples, 4096)
    assert full.truncated == 0
    short_len = len(full.rows[0]["input_ids"]) - 3  # cuts into the assistant answer, which keeps some labels
    cut = tokenize_examples(tokenizer, examples, short_len)
    assert cut.truncated == 3 and all(len(r["input_ids"]) <= short_len for r in cut.rows)
    assert "truncated 3 of 3" in capsys.readouterr().err
    assert tokenize_examples(tokenizer, examples, 10).dropped == 3  # no assistant token left


# ------------------------------------------------------------------------------------- packing

def fake_rows(lengths):
    return [{"input_ids": list(range(100 * i, 100 * i + n)), "labels": list(range(100 * i, 100 * i + n))}
            for i, n in enumerate(lengths)]


def test_pack_restarts_positions_and_masks_boundaries():
    rows = pack(fake_rows([5, 4, 3, 6, 2]), max_seq_len=10)
    assert [r["seq_lens"] for r in rows] == [[5, 4], [3, 6], [2]]
    assert rows[0]["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert rows[0]["labels"][0] == IGNORE and rows[0]["labels"][5] == IGNORE and rows[0]["labels"][6] == 101
    assert all(len(r["input_ids"]) <= 10 for r in rows)


def test_collate_pads_and_builds_a_block_causal_mask():
    import torch

    unpacked = collate(fake_rows([3, 2]), pad_id=7, packing=False)
    assert unpacked["input_ids"][1].tolist() == [100, 101, 7]
    assert unpacked["labels"][1].tolist() == [100, 101, IGNORE]
    assert unpacked["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]

    packed = collate(pack(fake_rows([2, 3, 6]), 6), pad_id=7, packing=True)
    allowed = (packed["attention_mask"][0, 0] == 0).int().tolist()
    assert packed["position_ids"][0].tolist() == [0, 1, 0, 1, 2, 0]  # the last token is padding
    assert allowed == [[1, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0],
                       [0, 0, 1, 0, 0, 0],
                       [0, 0, 1, 1, 0, 0],
                       [0, 0, 1, 1, 1, 0],
                       [0, 0, 0, 0, 0, 1]]
    assert packed["attention_mask"].dtype == torch.float32
    assert collate(pack(fake_rows([2]), 6), 7, True, mask_dtype=torch.bfloat16)["attention_mask"].dtype == torch.bfloat16


@pytest.fixture(scope="module")
def tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).float().eval()


def random_examples(lengths, seed=0):
    import random

    rng = random.Random(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = [rng.randrange(3, 128) for _ in range(n)]
        prompt = 0 if i % 2 == 0 else rng.randrange(1, n - 1)  # some examples are trained from their first token
        out.append({"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:]})
    return out


def per_example_loss(model, batch, spans):
    """Summed next-token loss of each (row, start, length) span of a batch."""
    import torch

    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    labels = batch["labels"]
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE, reduction="none")
    return [float(losses[row, max(start - 1, 0):start + n - 1].sum()) for row, start, n in spans]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("four_d_mask", [True, False])
def test_packed_and_unpacked_per_example_losses_agree(tiny_llama, attn, four_d_mask):
    tiny_llama.set_attn_implementation(attn)
    examples = random_examples([17, 9, 23, 12, 5])
    separate = []
    for ex in examples:
        separate += per_example_loss(tiny_llama, collate([ex], pad_id=0, packing=False), [(0, 0, len(ex["input_ids"]))])

    rows = pack(examples, max_seq_len=40)
    assert len(rows) < len(examples) and any(len(r["seq_lens"]) > 1 for r in rows)
    batch = collate(rows, pad_id=0, packing=True, four_d_mask=four_d_mask)
    spans = []
    for r, row in enumerate(rows):
        start = 0
        for n in row["seq_lens"]:
            spans.append((r, start, n))
            start += n
    packed = per_example_loss(tiny_llama, batch, spans)
    order = [i for row in rows for i in _members(row, examples)]
    assert packed == pytest.approx([separate[i] for i in order], abs=1e-4)

    # HF's own loss (labels shifted inside the model) sees exactly the same tokens: no example's first
    # token is predicted from the previous example's last one.
    import torch

    with torch.no_grad():
        hf = tiny_llama(**batch, use_cache=False).loss.item()
    n_tokens = sum(sum(1 for t in ex["labels"][1:] if t != IGNORE) for ex in examples)
    assert hf * n_tokens == pytest.approx(sum(separate), abs=1e-3)


def test_packing_without_the_block_mask_would_leak(tiny_llama):
    """The check above can fail: plain causal attention over a packed row changes the losses."""
    tiny_llama.set_attn_implementation("sdpa")
    examples = random_examples([17, 9], seed=1)
    separate = per_example_loss(tiny_llama, collate([examples[1]], 0, False), [(0, 0, 9)])
    batch = collate(pack(examples, 40), 0, True)
    batch.pop("attention_mask")
    batch["position_ids"] = batch["position_ids"].clone()
    batch["position_ids"][0] = batch["position_ids"][0].new_tensor(list(range(26)))
    leaked = per_example_loss(tiny_llama, batch, [(0, 17, 9)])
    assert abs(leaked[0] - separate[0]) > 1e-3


def _members(row, examples):
    """Indices of the examples packed into `row`, in order (matched by their token ids)."""
    out, start = [], 0
    for n in row["seq_lens"]:
        ids = row["input_ids"][start:start + n]
        out.append(next(i for i, ex in enumerate(examples) if ex["input_ids"] == ids))
        start += n
    return out


def test_collate_pads_width_to_a_multiple():
    from appliance.packing import collate, pack

    rows = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4] * 5, "labels": [4] * 5}]
    b = collate(rows, 0, packing=False, pad_to_multiple=8)
    assert b["input_ids"].shape == (2, 8) and b["attention_mask"].sum().item() == 8
    assert (b["labels"][:, 5:] == -100).all()
    packed = collate(pack(rows, 16), 0, packing=True, pad_to_multiple=16)
    assert packed["input_ids"].shape == (1, 16) and packed["attention_mask"].shape == (1, 1, 16, 16)
    assert collate(rows, 0, packing=False)["input_ids"].shape == (2, 5)
