"""Trainer overhead: one training step of the shared trainer (``bench.train.trainer.train_steps``) vs a
minimal hand-written PyTorch loop, side by side in one process.

    python -m bench perf trainer [--method seq-ft --steps 20 --repeats 5 --threads N]

Both train the same tiny-preset LLaVA (two deep copies of one model with the method attached), on
the same pre-collated coin-mini batches (so data loading is not part of either side; its cost per
batch is printed separately), with the same AdamW, the same warm-up + cosine schedule, gradient
clipping at 1.0 and ``zero_grad(set_to_none=True)``. The reference loop is

    out = model(**batch); loss = out.loss (+ aux); loss.backward()
    clip_grad_norm_(params, 1.0); opt.step(); sched.step(); opt.zero_grad(set_to_none=True)

A time is the loop's seconds / steps (``TrainStats.loop_seconds`` for the trainer: the per-call set-up
of optimizer, accelerate wrappers and progress bar and the final ``free_memory`` (a ``gc.collect``) are
printed apart, they are paid once per task); the two
variants alternate round by round and the medians are compared. Before timing, both run
``--check-steps`` steps from the same weights with a loss logged every step and must agree bit for
bit (losses and final trained parameters). Target: trainer / reference <= 1.10.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import time

import torch

from bench.perf.common import header, interleaved, median, tiny_backbone
from methods.base import MethodContext, trainable_parameters
from bench.train.trainer import MODEL_KEYS, cosine_with_warmup, train_steps
from bench.config import build_config
from bench.train.data import encode_split, train_loader
from bench.run.protocol import make_accelerator, ordered_tasks
import methods


def reference_steps(model, params, batches, steps: int, *, lr: float, warmup_ratio: float = 0.03,
                    max_grad_norm: float = 1.0, aux_loss=lambda: None, before_forward=lambda b, p: None):
    """The minimal loop; returns (seconds, per-step losses as a tensor)."""
    params = list({id(p): p for p in params if p.requires_grad}.values())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.999))
    sched = cosine_with_warmup(opt, int(round(warmup_ratio * steps)), steps)
    model.train()
    losses = []
    it = itertools.cycle(batches)
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(it)
        before_forward(batch, "train")
        out = model(**{k: batch[k] for k in MODEL_KEYS if k in batch})
        loss = out.loss
        aux = aux_loss()
        if aux is not None:
            loss = loss + aux
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.detach())
    seconds = time.perf_counter() - start
    model.eval()
    return seconds, torch.stack(losses)


def build(method_name: str, batch_size: int, n_batches: int, tasks: str = "vqav2"):
    cfg = build_config("tiny", method=method_name, tasks=tasks, batch_size=batch_size, mixed_precision="no")
    accelerator = make_accelerator(cfg)
    task_list = ordered_tasks(cfg)
    backbone, weights = tiny_backbone(cfg, task_list)
    encoded = encode_split(backbone, task_list[0].load("train", cfg.data_spec()))
    loader = train_loader(backbone, encoded, batch_size, seed=0)
    t = time.perf_counter()
    batches = list(itertools.islice(iter(loader), n_batches))
    collate_s = (time.perf_counter() - t) / n_batches

    def attached(model):
        method = methods.build(method_name, {})
        ctx = MethodContext(num_tasks=len(task_list), steps_per_task=cfg.steps_per_task, device=accelerator.device,
                            image_token_id=backbone.image_token_id, run_seed=0)
        torch.manual_seed(0)
        method.attach(model, ctx)
        method.begin_task(0, task_list[0], batches)
        return method

    return cfg, accelerator, backbone, weights, batches, collate_s, attached


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench perf trainer", description=__doc__.split("\n")[0])
    p.add_argument("--method", default="seq-ft")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="training steps per timed call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--check-steps", type=int, default=12, help="steps of the bit-for-bit check (0: skip)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, accelerator, backbone, weights, batches, collate_s, attached = build(args.method, args.batch_size, 16)
    print(header(f"trainer overhead: {args.method} on the tiny preset ({weights}), batch {args.batch_size}, "
                 f"{args.steps} steps per call, median of {args.repeats} interleaved rounds"))

    def trainer_call(model, method, steps, log_every):
        return train_steps(model, trainable_parameters(method.model), batches, steps, accelerator=accelerator, lr=cfg.lr,
                           warmup_ratio=cfg.warmup_ratio, aux_loss=method.auxiliary_loss,
                           before_forward=method.before_forward, after_step=method.after_optimizer_step,
                           desc="perf", log_every=log_every)

    base = backbone.model
    ok = True
    if args.check_steps:
        a, b = copy.deepcopy(base), copy.deepcopy(base)
        ma, mb = attached(a), attached(b)
        stats = trainer_call(a, ma, args.check_steps, log_every=1)
        _, ref_losses = reference_steps(b, trainable_parameters(mb.model), batches, args.check_steps, lr=cfg.lr,
                                        warmup_ratio=cfg.warmup_ratio, aux_loss=mb.auxiliary_loss,
                                        before_forward=mb.before_forward)
        same_loss = [v for _, v in stats.loss_curve] == ref_losses.tolist()
        same_params = all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
        ok = same_loss and same_params
        print(f"bit-for-bit check over {args.check_steps} steps: losses {'identical' if same_loss else 'DIFFER'}, "
              f"parameters {'identical' if same_params else 'DIFFER'}")

    mt, mr = copy.deepcopy(base), copy.deepcopy(base)
    meth_t, meth_r = attached(mt), attached(mr)
    setup = []

    def run_trainer():
        t = time.perf_counter()
        stats = trainer_call(mt, meth_t, args.steps, log_every=25)
        setup.append(time.perf_counter() - t - stats.loop_seconds)
        return stats.loop_seconds / args.steps

    def run_reference():
        s, _ = reference_steps(mr, trainable_parameters(meth_r.model), batches, args.steps, lr=cfg.lr,
                               warmup_ratio=cfg.warmup_ratio, aux_loss=meth_r.auxiliary_loss,
                               before_forward=meth_r.before_forward)
        return s / args.steps

    times = interleaved({"trainer": run_trainer, "reference": run_reference}, args.repeats, args.warmup)
    tr, ref = median(times["trainer"]), median(times["reference"])
    ratios = [a / b for a, b in zip(times["trainer"], times["reference"])]
    print(f"| loop | ms / step (median) | per-round ms |")
    print(f"|---|---:|---|")
    print(f"| bench.train.trainer.train_steps | {tr * 1e3:.1f} | {' '.join(f'{x * 1e3:.1f}' for x in times['trainer'])} |")
    print(f"| hand-written loop | {ref * 1e3:.1f} | {' '.join(f'{x * 1e3:.1f}' for x in times['reference'])} |")
    print(f"trainer set-up per call (optimizer, accelerate wrappers, bar, free_memory): {median(setup) * 1e3:.1f} ms; "
          f"data loading (collate + image processing) per batch, not in either loop: {collate_s * 1e3:.1f} ms")
    print(f"trainer / reference = {tr / ref:.3f} (median of ratios per round {median(ratios):.3f}; target <= 1.10)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
