"""A directly built tiny LLaVA and toy tasks for the cmoe tests (no harness, no images, no stage 0).

Task k's prompts are random content tokens from its own id range followed by its own fixed
three-token instruction (as CoIN's per-task instructions), so the tasks are clearly separable by the
base model's last-prompt-token state; batches use the harness's layouts (training: right-padded
prompt + answer with labels -100 on the prompt; evaluation: left-padded prompts)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import LlavaForConditionalGeneration
from micro_llava import micro_llava  # tests/ is on sys.path through its conftest.py

D, VOCAB, IMAGE, PAD = 32, 64, 63, 0
RANGES = [(1, 15), (15, 29), (29, 43)]
INSTRUCTIONS = [[43, 44, 45], [46, 47, 48], [49, 50, 51]]
RECORDS, BATCH = 24, 6


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Import into a test module to run it single-threaded: these models are latency-bound, and on a
    shared 2-core machine a second intra-op thread only contends (a VAE fit ran 15x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_llava(seed: int = 0) -> LlavaForConditionalGeneration:
    return micro_llava(seed, d=D, intermediate=64, vocab=VOCAB, image_token_id=IMAGE)


class ToyTask:
    def __init__(self, k: int):
        self.k, self.name = k, f"toy{k}"


class ToySplit(Dataset):
    """``n`` records of task k: 2-6 content tokens + the instruction, answers of 1-2 tokens."""

    def __init__(self, k: int, n: int = RECORDS, seed: int = 0):
        g = torch.Generator().manual_seed(1000 * k + seed)
        lo, hi = RANGES[k]
        self.items = []
        for i in range(n):
            p = int(torch.randint(2, 7, (1,), generator=g))
            a = int(torch.randint(1, 3, (1,), generator=g))
            prompt = torch.randint(lo, hi, (p,), generator=g).tolist() + INSTRUCTIONS[k]
            self.items.append({"prompt_ids": prompt,
                               "answer_ids": torch.randint(lo, hi, (a,), generator=g).tolist(), "index": i})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def collate_train(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    seqs = [it["prompt_ids"] + it["answer_ids"] for it in items]
    labels = [[-100] * len(it["prompt_ids"]) + it["answer_ids"] for it in items]
    w = max(map(len, seqs))
    return {"input_ids": torch.tensor([s + [PAD] * (w - len(s)) for s in seqs]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (w - len(s)) for s in seqs]),
            "labels": torch.tensor([l + [-100] * (w - len(l)) for l in labels]),
            "index": torch.tensor([it["index"] for it in items])}


def collate_eval(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    seqs = [it["prompt_ids"] for it in items]
    w = max(map(len, seqs))
    return {"input_ids": torch.tensor([[PAD] * (w - len(s)) + s for s in seqs]),
            "attention_mask": torch.tensor([[0] * (w - len(s)) + [1] * len(s) for s in seqs]),
            "index": torch.tensor([it["index"] for it in items])}


def train_loader(k: int, seed: int = 0) -> DataLoader:
    return DataLoader(ToySplit(k), batch_size=BATCH, shuffle=True, drop_last=True,
                      generator=torch.Generator().manual_seed(seed), collate_fn=collate_train)


def eval_batch(k: int, n: int = 12, seed: int = 7) -> dict[str, torch.Tensor]:
    """Test prompts of task k (fresh records, not the training ones)."""
    return collate_eval(ToySplit(k, n, seed=seed).items)


def run_tasks(method, model, tasks: Sequence[int], steps: int = 10,
              after_task: Callable[[int], None] = lambda t: None):
    """The protocol's method lifecycle without evaluation: attach, then begin/train/end per task."""
    from accelerate import Accelerator

    from bench.train.phases import train_task
    from methods.base import MethodContext

    acc = Accelerator()
    ctx = MethodContext(num_tasks=len(tasks), steps_per_task=steps, device=torch.device("cpu"), image_token_id=IMAGE,
                        run_seed=0)
    method.attach(model, ctx)
    for t, k in enumerate(tasks):
        loader, task = train_loader(k, seed=t), ToyTask(k)
        method.begin_task(t, task, loader)
        train_task(model, method, t, task, loader, steps, accelerator=acc, lr=1e-2, desc="toy")
        method.end_task(t, task, loader)
        after_task(t)
    return ctx
