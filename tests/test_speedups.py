"""Speed-ups must not change what is learned: same loss and gradients as the plain path.

CPU: tiny random-init Llama / Qwen2 configs in fp32 (the fused LoRA path, no-upcast preparation,
selective checkpointing, plan choice). GPU (`-m gpu`): the Liger kernels and the fused path in bf16
on a 4-bit base against the plain transformers + peft recipe. Timings never appear here: they live
in bench/results/qlora_speed.md.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from appliance import speedups  # noqa: E402
from appliance.config import TrainConfig  # noqa: E402


def tiny_model(kind: str = "llama", seed: int = 0, dtype=None):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(kind, vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                               tie_word_embeddings=False)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype or torch.float32, attn_implementation="eager")


def with_lora(model, seed: int = 1):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM", init_lora_weights=False))
    model.train()
    return model


def loss_and_grads(model, batch) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.item(), grads


def assert_same(a, b, rtol=1e-5, atol=1e-6):
    (la, ga), (lb, gb) = a, b
    assert la == pytest.approx(lb, rel=rtol)
    assert ga.keys() == gb.keys() and len(ga) > 0
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=rtol * 10, atol=atol, msg=n)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 256, (2, 24), generator=g)
    labels = ids.clone()
    labels[1, :5] = -100
    return {"input_ids": ids, "labels": labels}


@pytest.fixture
def restore_peft():
    yield
    speedups.fast_lora(False)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_fused_lora_matches_peft_fp32(kind, batch, restore_peft):
    base = tiny_model(kind)
    plain = with_lora(copy.deepcopy(base))
    ref = loss_and_grads(plain, batch)
    speedups.fast_lora(True)
    fused = with_lora(copy.deepcopy(base))
    got = loss_and_grads(fused, batch)
    assert_same(got, ref)
    # the fused forward really ran (not a silent fall-back to peft's)
    from peft.tuners.lora.layer import Linear

    assert Linear.forward is not Linear._peft_forward


def test_fused_lora_falls_back_when_adapters_disabled(batch, restore_peft):
    speedups.fast_lora(True)
    model = with_lora(tiny_model())
    with model.disable_adapter():
        off = model(**batch).loss.item()
    on = model(**batch).loss.item()
    base = tiny_model()
    assert off == pytest.approx(base(**batch).loss.item(), rel=1e-6)
    assert on != pytest.approx(off, rel=1e-4)  # init_lora_weights=False: the adapter changes the output


def test_fast_lora_off_restores_peft(restore_peft):
    from peft.tuners.lora.layer import Linear

    original = Linear.forward
    speedups.fast_lora(True)
    speedups.fast_lora(True)  # idempotent: never wraps the wrapper
    assert Linear.forward is not original and Linear._peft_forward is original
    speedups.fast_lora(False)
    assert Linear.forward is original and "_peft_forward" not in Linear.__dict__


def test_fused_lora_on_4bit_base_matches_peft(batch, restore_peft):
    """QLoRA (bitsandbytes NF4 on CPU): the fused forward gives peft's loss and gradients."""
    pytest.importorskip("bitsandbytes")
    import os
    import tempfile

    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    with tempfile.TemporaryDirectory() as d:
        tiny_model().save_pretrained(d)
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)

        def fresh():  # trained models must be freshly loaded (FACTS: eval forward repacks NF4 on CPU)
            m = AutoModelForCausalLM.from_pretrained(d, quantization_config=q, dtype=torch.float32,
                                                     attn_implementation="eager")
            return with_lora(m)

        assert os.path.exists(os.path.join(d, "config.json"))
        ref = loss_and_grads(fresh(), batch)
        speedups.fast_lora(True)
        got = loss_and_grads(fresh(), batch)
    assert_same(got, ref, rtol=1e-4, atol=1e-5)


def test_no_upcast_and_selective_checkpointing_keep_gradients(batch):
    base = tiny_model("qwen2")
    ref = loss_and_grads(with_lora(copy.deepcopy(base)), batch)
    for skip in (0, 2):
        plan = speedups.SpeedPlan(device="cpu", gradient_checkpointing=True, checkpoint_skip=skip)
        model = speedups.after_load(copy.deepcopy(base), plan)
        layers = speedups.decoder_layers(model)
        assert [lay.gradient_checkpointing for lay in layers] == [True] * (3 - skip) + [False] * skip
        assert_same(loss_and_grads(with_lora(model), batch), ref)


def test_compiled_layers_keep_gradients(batch, restore_peft):
    """Layer compile + checkpointing + fused LoRA wiring (aot_eager: the graph capture without
    Inductor's codegen; Inductor's numerics are checked on GPU by check_equivalence.py)."""
    import torch._dynamo

    base = tiny_model("qwen2")
    ref = loss_and_grads(with_lora(copy.deepcopy(base)), batch)
    plan = speedups.SpeedPlan(device="cpu", gradient_checkpointing=True, fused_lora=True,
                              compile_layers=True, compile_backend="aot_eager")
    speedups.before_load(plan, "qwen2")
    model = with_lora(speedups.after_load(copy.deepcopy(base), plan))
    try:
        got = loss_and_grads(model, batch)
        assert all(lay._compiled_call_impl is not None for lay in speedups.decoder_layers(model))
    finally:
        torch._dynamo.reset()
    assert_same(got, ref, rtol=1e-4, atol=1e-5)


def saved_activation_bytes(model, batch) -> int:
    """Bytes autograd keeps for backward, parameters not counted (they exist anyway)."""
    params = {p.data_ptr() for p in model.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**batch)
    out.loss.backward()
    return total


def test_checkpoint_in_graph_keeps_gradients_and_memory(restore_peft):
    """Recompute inside the compiled layer graph: same loss and gradients as transformers'
    checkpointing, and only about the layers' inputs are kept (not their activations)."""
    import torch._dynamo

    base = tiny_model("qwen2")
    ids = torch.randint(0, 256, (1, 96), generator=torch.Generator().manual_seed(5))
    batch = {"input_ids": ids, "labels": ids}

    def prepared(**kw):
        plan = speedups.SpeedPlan(device="cpu", fused_lora=True, **kw)
        speedups.before_load(plan, "qwen2")
        return with_lora(speedups.after_load(copy.deepcopy(base), plan))

    hf_ckpt = prepared(gradient_checkpointing=True)
    ref = loss_and_grads(hf_ckpt, batch)
    model = prepared(gradient_checkpointing=True, compile_layers=True, compile_backend="aot_eager",
                     checkpoint_in_graph=True)
    try:
        got = loss_and_grads(model, batch)
        assert all(not lay.gradient_checkpointing for lay in speedups.decoder_layers(model))
        kept = saved_activation_bytes(model, batch)
    finally:
        torch._dynamo.reset()
    assert_same(got, ref, rtol=1e-4, atol=1e-5)
    kept_hf = saved_activation_bytes(hf_ckpt, batch)
    kept_all = saved_activation_bytes(prepared(gradient_checkpointing=False), batch)
    assert kept < 2 * kept_hf and kept < kept_all / 3, (kept, kept_hf, kept_all)
    model.eval()  # eval mode: plain compiled forward, nothing recomputed or kept
    with torch.no_grad():
        assert model(**batch).loss.item() == pytest.approx(ref[0], rel=1e-4)
    torch._dynamo.reset()


def test_liger_chunk_const_gives_the_asked_chunks():
    """Liger's chunking rule applied to our constant: ~`tokens`-row chunks, never more than 2x."""
    def chunk_rows(rows, hidden, vocab, const):
        chunks = -(-vocab // (const * hidden))
        return min(1 << (-(-rows // chunks) - 1).bit_length(), rows)

    for vocab, hidden in ((152064, 3584), (128256, 4096), (49152, 576)):
        for rows in (300, 2048, 8192, 32768):
            const = speedups.liger_chunk_const(rows, hidden, vocab, 1024)
            assert const >= 1
            assert min(rows, 512) <= chunk_rows(rows, hidden, vocab, const) <= 2048


def test_compile_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("APPLIANCE_COMPILE", "0")
    plan = speedups.choose(TrainConfig(), "cuda", quantized=True)
    assert not plan.compile_layers and plan.fused_kernels == speedups.liger_available()


def test_choose_plans(monkeypatch):
    monkeypatch.delenv("APPLIANCE_COMPILE", raising=False)
    cpu = speedups.choose(TrainConfig(), "cpu", quantized=False)
    assert not (cpu.fused_kernels or cpu.fused_lora or cpu.upcast_fp32 or cpu.gradient_checkpointing)
    gpu = speedups.choose(TrainConfig(), "cuda", quantized=True)
    assert gpu.gradient_checkpointing and gpu.fused_lora and not gpu.upcast_fp32
    assert gpu.fused_loss == speedups.liger_available()
    assert gpu.fused_kernels == (speedups.liger_available() and not gpu.compile_layers)
    plain = speedups.choose(TrainConfig(kernels="off"), "cuda", quantized=True)
    assert plain.upcast_fp32 and not (plain.fused_kernels or plain.fused_lora)
    assert "plain transformers" in plain.describe()
    assert "fused LoRA path" in gpu.describe()
    off = speedups.choose(TrainConfig(gradient_checkpointing="off"), "cuda", quantized=True)
    assert not off.gradient_checkpointing and not off.checkpoint_in_graph
    # the batch-1 measures: recompute inside the compiled graph, CUDA graphs (few widths), fused AdamW
    assert gpu.checkpoint_in_graph and gpu.cuda_graphs and gpu.pad_to_multiple == 128
    assert gpu.optimizer == "adamw_fused" and gpu.loss_chunk_tokens == (1024 if gpu.fused_loss else 0)
    assert not (cpu.cuda_graphs or cpu.checkpoint_in_graph or plain.cuda_graphs) and cpu.pad_to_multiple == 1
    # FSDP (seen on 2 H200): LoRA weights are gathered only when peft calls their modules, and
    # fp32-upcast norms cannot be flattened beside bf16 weights
    fsdp = speedups.choose(TrainConfig(), "cuda", quantized=True, processes=2)
    assert not (fsdp.fused_lora or fsdp.compile_layers or fsdp.cuda_graphs or fsdp.upcast_fp32)
    assert "FSDP" in fsdp.describe()
    assert not speedups.choose(TrainConfig(kernels="off"), "cuda", quantized=True, processes=2).upcast_fp32
    monkeypatch.setenv("APPLIANCE_CUDA_GRAPHS", "0")
    no_graphs = speedups.choose(TrainConfig(), "cuda", quantized=True)
    assert no_graphs.compile_layers and not no_graphs.cuda_graphs and no_graphs.pad_to_multiple == 1


def test_optimizer_auto_and_stable_grads():
    gpu = speedups.choose(TrainConfig(), "cuda", quantized=True)
    assert speedups.pick_optimizer(gpu, 40_000_000) == "adamw_fused"  # 7B, r=16: 320 MiB of states
    big = speedups.choose(TrainConfig(), "cuda", quantized=True)
    assert speedups.pick_optimizer(big, 400_000_000) == "paged_adamw_8bit" and "paged 8-bit" in big.describe()
    assert speedups.pick_optimizer(speedups.choose(TrainConfig(kernels="off"), "cuda", True), 10) == "paged_adamw_8bit"
    assert speedups.pick_optimizer(speedups.choose(TrainConfig(), "cpu", False), 10) == "adamw"
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2), requires_grad=False)]
    speedups.prepare_grads(params, speedups.SpeedPlan(device="cpu"))
    assert params[0].grad is None
    speedups.prepare_grads(params, speedups.SpeedPlan(device="cuda", cuda_graphs=True))
    assert torch.equal(params[0].grad, torch.zeros(3)) and params[1].grad is None
    buffer = params[0].grad
    buffer += 1
    opt = torch.optim.SGD(params[:1], lr=0.1)
    speedups.zero_grad(opt, speedups.SpeedPlan(device="cuda", cuda_graphs=True))
    assert params[0].grad is buffer and not buffer.any()  # same buffer, zeroed in place
    speedups.zero_grad(opt, speedups.SpeedPlan(device="cpu"))
    assert params[0].grad is None


def test_unsupported_model_type_turns_fused_kernels_off():
    plan = speedups.SpeedPlan(device="cuda", fused_kernels=True, fused_loss=True)
    speedups.before_load(plan, "some-new-arch")
    assert not plan.fused_kernels and not plan.fused_loss
    assert "not supported" in plan.describe()


# ----------------------------------------------------------------------------------------- GPU

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_gpu_default_plan_matches_plain_recipe_in_bf16():
    """Liger + fused LoRA + no upcast vs kernels: off (peft's prep, fp32 logits), 4-bit base:
    same loss and gradients within bf16 tolerance. Runs in a subprocess because Liger patches
    transformers classes for the whole process."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "qlora_speed" / "check_equivalence.py"
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "SAME" in r.stdout


def test_train_config_knobs_exist():
    # the plan reads these fields; keep them in the config contract
    cfg = SimpleNamespace(**{f: getattr(TrainConfig(), f) for f in ("kernels", "gradient_checkpointing")})
    assert speedups.choose(cfg, "cpu", True).device == "cpu"
