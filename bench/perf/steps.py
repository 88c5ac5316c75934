"""Training throughput: optimiser steps per second of the shared trainer (seq-ft LoRA on every decoder
linear, the default method) on synthetic batches shaped like a run's.

    python -m bench perf steps [--model-config tiny|7b] [--steps 30 --batch-size B --text-len 48]
                               [--mixed-precision no|bf16|fp16] [--compile] [--method M] [--gradient-checkpointing]

``tiny``: the tiny preset's LLaVA (CLIP 2 layers + Llama 4 layers, d=128, 64x64 images; random
weights), on whatever device accelerate picks (CPU here). ``7b``: a LLaVA-1.5-7B-class config (CLIP
ViT-L/14-336, 24 layers; Llama-2-7B decoder, 32 layers, d=4096; 576 image tokens) with random bf16
weights, built directly on the GPU. It measures only on a GPU: on a CPU-only machine it builds the
config on the meta device (no memory), prints its parameter counts and stops without timing (a
7B step on 2 CPU cores says nothing about a GPU run). Steps/s = steps / ``TrainStats.loop_seconds``
after ``--warmup`` steps (compilation, allocator warm-up); the loop syncs with the device only at
its logging interval and once at the end, so the figure is the device's, not the host's.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
from accelerate import Accelerator

from bench.perf.common import header
from bench.train.trainer import enable_gradient_checkpointing, train_steps
from bench.model.lora import LoRASpec, inject_lora
from methods.base import MethodContext
import methods
import tasks

IMAGE_TOKEN = 3


def llava_config(kind: str):
    if kind == "tiny":
        vision = CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=64, patch_size=8, projection_dim=128)
        text = LlamaConfig(vocab_size=2048, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                           tie_word_embeddings=False)
        return LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, vision_feature_layer=-1,
                           vision_feature_select_strategy="default", image_seq_length=64)
    # LLaVA-1.5-7B: openai/clip-vit-large-patch14-336 + Vicuna-7B (Llama-2-7B shapes)
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=32000, vision_feature_layer=-2,
                       vision_feature_select_strategy="default", image_seq_length=576)


def synthetic_batch(config, batch_size: int, text_len: int, answer_len: int, device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n_img = config.image_seq_length
    vocab = config.text_config.vocab_size
    text = torch.randint(10, min(vocab, 30000), (batch_size, text_len + answer_len), generator=g)
    ids = torch.cat([text[:, :2], torch.full((batch_size, n_img), config.image_token_id), text[:, 2:]], dim=1)
    labels = torch.full_like(ids, -100)
    labels[:, -answer_len:] = ids[:, -answer_len:]
    size = config.vision_config.image_size
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device),
            "pixel_values": torch.randn(batch_size, 3, size, size, generator=g).to(device)}


def count(model) -> tuple[int, int]:
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.parameters() if p.requires_grad)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench perf steps", description=__doc__.split("\n")[0])
    p.add_argument("--model-config", choices=["tiny", "7b"], default="tiny")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=None, help="default: 8 (tiny), 4 (7b)")
    p.add_argument("--text-len", type=int, default=48, help="prompt text tokens besides the image tokens")
    p.add_argument("--answer-len", type=int, default=4)
    p.add_argument("--lora-rank", type=int, default=None, help="default: 16 (tiny), 128 (7b, CoIN's)")
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default=None,
                   help="default: no on CPU, bf16 on a GPU")
    p.add_argument("--compile", action="store_true", help="train through torch.compile")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--method", default=None,
                   help="a registered method attached to the model (its defaults; first task's first phase) "
                        "instead of the plain LoRA of --lora-rank")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute decoder activations in backward")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON (python -m bench perf gpu)")
    return p


def _count_on_meta(config, rank: int) -> None:
    """No GPU: the 7B-class model's parameter counts on the meta device (no memory), and why nothing is timed."""
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
        for q in model.parameters():
            q.requires_grad_(False)
        inject_lora(model, LoRASpec(rank=rank, alpha=2.0 * rank))
    total, trained = count(model)
    print(f"7B-class LLaVA config (CLIP ViT-L/14-336 + Llama-2-7B shapes, {config.image_seq_length} image tokens): "
          f"{total / 1e9:.2f} B parameters with LoRA r={rank}, {trained / 1e6:.1f} M trained (counted on the meta device).")
    print("No GPU here: the 7B throughput is measured only on a GPU (a step on this CPU would take minutes and "
          "say nothing about a GPU run). Run `python -m bench perf steps --model-config 7b` on a CUDA machine; "
          "`python -m bench perf steps` times the tiny preset here.")


def _frozen_model(config, big: bool, device):
    """The LLaVA with random weights (seed 0) and every parameter frozen."""
    torch.manual_seed(0)
    if big:  # random bf16 weights straight on the GPU: no 28 GB fp32 copy on the host
        with torch.device(device):
            model = LlavaForConditionalGeneration(config).to(torch.bfloat16)
    else:
        model = LlavaForConditionalGeneration(config).to(device)
    for q in model.parameters():
        q.requires_grad_(False)
    return model


def _trainable(model, args: argparse.Namespace, config, device, batch, rank: int) -> tuple[list, dict, str]:
    """The trained parameters, the trainer hooks and a description: ``--method``'s first phase, else plain LoRA."""
    if args.method:
        params, hooks = attach_method(model, args.method, config, device, batch)
        return params, hooks, f"{args.method} (its defaults)"
    adapters = inject_lora(model, LoRASpec(rank=rank, alpha=2.0 * rank))
    params = [q for a in adapters for q in (a.lora_A, a.lora_B)]
    for q in params:
        q.requires_grad_(True)
    return params, {}, f"LoRA r={rank}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available()
    big = args.model_config == "7b"
    config = llava_config(args.model_config)
    rank = args.lora_rank or (128 if big else 16)
    if big and not gpu:
        _count_on_meta(config, rank)
        return 0
    precision = args.mixed_precision or ("bf16" if gpu else "no")
    accelerator = Accelerator(mixed_precision=precision)
    device = accelerator.device
    model = _frozen_model(config, big, device)
    bs = args.batch_size or (4 if big else 8)
    batch = synthetic_batch(config, bs, args.text_len, args.answer_len, device)
    params, hooks, what = _trainable(model, args, config, device, batch, rank)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    total, trained = count(model)
    trained = sum(q.numel() for q in params)
    seq = batch["input_ids"].shape[1]
    print(header(f"training steps/s: {args.model_config} LLaVA ({total / 1e6:.1f} M parameters, {what}: "
                 f"{trained / 1e6:.2f} M trained), batch {bs} x {seq} tokens ({config.image_seq_length} image), "
                 f"{device}, mixed precision {precision}{', torch.compile' if args.compile else ''}"
                 f"{', gradient checkpointing' if args.gradient_checkpointing else ''}"))
    run = dict(accelerator=accelerator, lr=1e-4, log_every=max(args.steps, 1), compile=args.compile, desc="steps",
               **hooks)
    t = time.perf_counter()
    train_steps(model, params, [batch], args.warmup, **run)
    warm = time.perf_counter() - t
    stats = train_steps(model, params, [batch], args.steps, **run)
    if gpu:
        torch.cuda.synchronize()
    sps = args.steps / stats.loop_seconds
    peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else None
    mem = f", peak GPU memory {peak:.1f} GiB" if gpu else ""
    print(f"{sps:.2f} steps/s ({1e3 / sps:.1f} ms/step, {sps * bs * seq:,.0f} tokens/s) over {args.steps} steps after "
          f"{args.warmup} warm-up steps ({warm:.1f} s){mem}; final loss {stats.final_loss:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "method": args.method or f"lora-r{rank}", "model_config": args.model_config, "parameters": total,
            "trained": trained, "batch": bs, "seq": seq, "steps_per_s": sps, "tokens_per_s": sps * bs * seq,
            "peak_gib": peak, "gradient_checkpointing": args.gradient_checkpointing, "mixed_precision": precision,
            "final_loss": stats.final_loss}))
    return 0


def attach_method(model, name: str, config, device, batch) -> tuple[list, dict]:
    """Attach a registered method (its default hyper-parameters) as a run does and begin its first task;
    returns the parameters of the task's first training phase and the trainer hooks."""
    method = methods.build(name, {})
    method.attach(model, MethodContext(num_tasks=8, steps_per_task=1000, device=device,
                                       image_token_id=config.image_token_id, run_seed=0))
    task = tasks.get("scienceqa")
    method.begin_task(0, task, [batch])
    phase = next(method.training_phases(0, task, [batch], 1000))
    return [q for q in phase.parameters if q.requires_grad], {
        "aux_loss": method.auxiliary_loss, "before_forward": method.before_forward,
        "after_step": method.after_optimizer_step}


if __name__ == "__main__":
    raise SystemExit(main())
