"""Evaluation: the task metric, held-out prompts, batched greedy generation and `appliance eval` on a run."""

from __future__ import annotations

import argparse
import json

import pytest

from appliance.data import Example, sample_eval_path
from appliance.evaluate import answer_correct, eval_rows, generate_hf, prompt_and_reference, run_cli, score_answers, score_model

REF = '{"city": "Lisbon", "temp_c": 23}'


@pytest.mark.parametrize("answer, correct", [
    ('{"city": "Lisbon", "temp_c": 23}', True),
    ('Sure! {"temp_c": 23, "city": " lisbon "} Hope that helps.', True),  # key order, case, spacing, chatter
    ('{"city": "Lisbon", "temp_c": "23"}', True),  # a number written as a string
    ('{"city": "Lisbon", "temp_c": 24}', False),
    ('{"city": "Porto", "temp_c": 23}', False),
    ('{"city": "Lisbon"}', False),
    ('{"city": "Lisbon", "temp_c": 23, "sky": "clear"}', False),
    ("The city is Lisbon and it is 23 degrees.", False),
    ('{"city": "Lisbon", "temp_c": 23', False),
    ("", False),
])
def test_json_answers_are_matched_field_by_field(answer, correct):
    assert answer_correct(answer, REF) is correct


def test_plain_references_need_a_normalised_exact_match():
    assert answer_correct("  Paris ", "paris.")
    assert not answer_correct("Paris, France", "Paris")
    assert score_answers(["Paris", "Rome", REF, "x"], ["paris", "Madrid", REF, REF]) == 0.5
    with pytest.raises(ValueError):
        score_answers(["a"], [])


def test_prompt_is_everything_before_the_last_assistant_turn():
    ex = Example([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                  {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}], "x.jsonl:1")
    prompt, ref = prompt_and_reference(ex)
    assert [m["content"] for m in prompt] == ["a", "b", "c"] and ref == "d"
    rows = eval_rows(sample_eval_path())
    assert len(rows) == 40 and all(prompt_and_reference(r)[0][-1]["role"] == "user" for r in rows)


@pytest.fixture(scope="module")
def base(base_model):
    from appliance.evaluate import load_model

    return load_model(base_model)


def test_batched_generation_matches_one_at_a_time(base):
    model, tokenizer = base
    prompts = [prompt_and_reference(r)[0] for r in eval_rows(sample_eval_path())[:3]]
    prompts[1] = [{"role": "user", "content": "What is the capital of France?"}]  # a shorter prompt: left padding
    batched = generate_hf(model, tokenizer, prompts, max_new_tokens=12)
    single = [generate_hf(model, tokenizer, [p], max_new_tokens=12)[0] for p in prompts]
    assert batched == single
    assert "Paris" in batched[1]


def test_score_model_scores_its_own_answers(base):
    rows = eval_rows(sample_eval_path())
    result = score_model(base, rows, limit=3)
    assert result["n"] == 3 and 0.0 <= result["score"] <= 1.0
    answers = [s["answer"] for s in result["samples"]]
    assert result["score"] == score_answers(answers, [prompt_and_reference(r)[1] for r in rows[:3]])
    assert 1.0 < result["perplexity"] < 1e4


def test_eval_cli_scores_base_and_adapter_of_a_run(base_model, tmp_path, capsys):
    """A run whose adapter answers differently: the table has both rows and eval.json records them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from appliance.workspace import Workspace

    ws = Workspace.open(tmp_path / "home")  # its own: the session workspace's "latest run" stays untouched
    run = ws.runs / "eval-cli-test"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(50.0)  # large enough to change greedy answers
    peft_model.save_pretrained(run / "adapter")
    (run / "run.json").write_text(json.dumps({"status": "done", "base_model": {"ref": "embedded:smollm2-135m-instruct",
                                                                               "path": str(base_model)}}))
    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps({"messages": r.messages}) + "\n" for r in eval_rows(sample_eval_path())[:2]))

    args = argparse.Namespace(run="eval-cli-test", model=None, dataset=str(data), limit=None)
    assert run_cli(args, ws) == 0
    out = capsys.readouterr().out
    assert "base " in out and "base+adapter" in out and f"held-out: {data} (2 rows)" in out
    saved = json.loads((run / "eval.json").read_text())["results"]
    assert saved["base"]["n"] == saved["base+adapter"]["n"] == 2
    assert saved["base"]["perplexity"] != pytest.approx(saved["base+adapter"]["perplexity"], rel=1e-3)
