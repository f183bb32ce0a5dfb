"""Packing and collation of tokenized examples into training batches.

Contamination-free packing: several examples share one row, but
- position ids restart at 0 for every example,
- the attention mask is block-diagonal and causal (a token never sees another example), and
- the label of each example's first token is -100, so the loss never asks the last token of one
  example to predict the first token of the next (HF shifts labels inside the model).
The per-example loss of a packed row therefore equals the loss of the examples run one by one.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


def pack(tokenized: list[dict], max_seq_len: int) -> list[dict]:
    """Greedy first-fit packing (in input order) into rows of at most `max_seq_len` tokens.

    Each row: input_ids, labels, position_ids (restarting per example) and seq_lens.
    Examples longer than max_seq_len are cut to it (tokenize_example normally did that already).
    """
    rows: list[dict] = []
    for ex in tokenized:
        ids = list(ex["input_ids"])[:max_seq_len]
        labels = list(ex["labels"])[:max_seq_len]
        if not ids:
            continue
        labels[0] = IGNORE
        row = next((r for r in rows if len(r["input_ids"]) + len(ids) <= max_seq_len), None)
        if row is None:
            row = {"input_ids": [], "labels": [], "position_ids": [], "seq_lens": []}
            rows.append(row)
        row["input_ids"] += ids
        row["labels"] += labels
        row["position_ids"] += list(range(len(ids)))
        row["seq_lens"].append(len(ids))
    return rows


def collate(rows: list[dict], pad_id: int, packing: bool, mask_dtype: Any = None, four_d_mask: bool = True,
            pad_to_multiple: int = 1) -> dict:
    """Right-pad rows into tensors.

    Unpacked: input_ids, labels (-100 on padding), attention_mask (1 = token, 0 = padding).
    Packed (rows from `pack`): input_ids, labels, position_ids and, with `four_d_mask`, a
    (batch, 1, L, L) additive mask in `mask_dtype` (default float32; pass the model's compute dtype):
    0 where a query may attend, the dtype's minimum elsewhere: block-diagonal and causal. Eager and
    SDPA attention in transformers take such a mask as-is. Without `four_d_mask` there is no
    attention_mask and transformers derives the same block-diagonal mask from the restarting
    position_ids (cheaper for long rows; flash-attention friendly), but only when the forward pass
    runs with `use_cache=False` (with a KV cache transformers skips that detection and the examples
    would see each other). Padding forms its own block, so no row is fully masked.
    `pad_to_multiple` rounds the width up (compiled models / CUDA graphs see few distinct shapes).
    """
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    width = -(-width // pad_to_multiple) * pad_to_multiple
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        input_ids[i, :n] = torch.tensor(r["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.tensor(r["labels"], dtype=torch.long)
    if not packing:
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for i, r in enumerate(rows):
            attention_mask[i, : len(r["input_ids"])] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}

    position_ids = torch.zeros((batch, width), dtype=torch.long)
    segments = torch.zeros((batch, width), dtype=torch.long)
    for i, r in enumerate(rows):
        seq_lens = r.get("seq_lens") or [len(r["input_ids"])]
        pad = width - sum(seq_lens)
        start = 0
        for s, n in enumerate(list(seq_lens) + ([pad] if pad else [])):
            position_ids[i, start:start + n] = torch.arange(n)
            segments[i, start:start + n] = s
            start += n
    out = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if four_d_mask:
        out["attention_mask"] = block_causal_mask(segments, mask_dtype or torch.float32)
    return out


def block_causal_mask(segments: Any, dtype: Any) -> Any:
    """(batch, 1, L, L) additive mask: query q sees key k iff k <= q and both lie in one segment."""
    import torch

    width = segments.shape[1]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    same = segments[:, :, None] == segments[:, None, :]
    allowed = (same & causal)[:, None, :, :]
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)
