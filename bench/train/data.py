"""Task records -> model batches. Tokenisation is done once per split (fast tokenizer, batched);
images are decoded and processed per batch so real CoIN splits never sit decoded in memory."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence
import bisect

import torch
from torch.utils.data import DataLoader, Dataset

from bench.model.backbone import Backbone

IGNORE = -100


@dataclass
class EncodedSplit(Dataset):
    """A TaskSplit with its prompts and answers tokenised; images stay lazy in ``split``."""

    split: Any  # tasks.TaskSplit or any Sequence[Record]
    prompt_ids: list[list[int]]
    answer_ids: list[list[int]]
    has_image: list[bool]

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.split[i].image if self.has_image[i] else None
        return {"prompt_ids": self.prompt_ids[i], "answer_ids": self.answer_ids[i], "image": image, "index": i}


def encode_split(backbone: Backbone, split) -> EncodedSplit:
    if hasattr(split, "dataset"):  # TaskSplit: read text and image presence without decoding images
        prompts, answers = split.texts()
        has_image = [x is not None for x in split.dataset.select_columns(["image"]).with_format("arrow")["image"].to_pylist()]
    else:
        prompts = [r.prompt for r in split]
        answers = [r.answer for r in split]
        has_image = [r.image is not None for r in split]
    return EncodedSplit(split, backbone.prompt_ids(prompts, has_image), backbone.answer_ids(answers), has_image)


class Collator:
    """Training batches: right-padded ``prompt + answer``, labels only on answer tokens (+ eos);
    evaluation batches: left-padded prompts so greedy decoding appends in one column."""

    def __init__(self, backbone: Backbone, train: bool):
        self.backbone, self.train = backbone, train

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pad = self.backbone.pad_id
        if self.train:
            seqs = [it["prompt_ids"] + it["answer_ids"] for it in items]
            labels = [[IGNORE] * len(it["prompt_ids"]) + it["answer_ids"] for it in items]
            width = max(map(len, seqs))
            input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
            label_t = torch.tensor([l + [IGNORE] * (width - len(l)) for l in labels])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
            batch = {"input_ids": input_ids, "attention_mask": mask, "labels": label_t}
        else:
            seqs = [it["prompt_ids"] for it in items]
            width = max(map(len, seqs))
            input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
            batch = {"input_ids": input_ids, "attention_mask": mask}
        images = [it["image"] for it in items if it["image"] is not None]
        if images:
            batch["pixel_values"] = self.backbone.pixel_values(images)
        batch["index"] = torch.tensor([it["index"] for it in items])
        return batch


def train_loader(backbone: Backbone, encoded: EncodedSplit, batch_size: int, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(encoded, batch_size=batch_size, shuffle=True, drop_last=len(encoded) >= batch_size,
                      generator=gen, collate_fn=Collator(backbone, train=True))


# Collated evaluation batches (and the image features bench.decode.generate.generate keeps next to them) of one
# split are kept for the next evaluation row while they fit in this many bytes per split.
EVAL_CACHE_BYTES = 256 * 2**20


class EvalBatches:
    """The evaluation batches of one split, collated once and replayed by every later evaluation row
    (a run evaluates every task T+1 times): decoding and processing the images, tokenised prompts
    and padding are pure functions of the data, so the replayed batches are the very same tensors.
    ``features`` is where ``generate`` keeps each batch's image features, with the fingerprint of the
    vision path they were computed under (bench.decode.generate.vision_fingerprint). A split whose batches
    exceed ``budget`` bytes is streamed from the DataLoader every time instead."""

    def __init__(self, loader: DataLoader, budget: int = EVAL_CACHE_BYTES):
        self.loader, self.budget = loader, budget
        self.batches: list[dict[str, torch.Tensor]] | None = None
        self.features: dict[int, tuple[Any, torch.Tensor]] = {}
        self.nbytes = 0
        self.too_big = False

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self.batches is not None:
            yield from self.batches
            return
        built: list | None = [] if not self.too_big else None
        size = 0
        for batch in self.loader:
            if built is not None:
                size += sum(v.numel() * v.element_size() for v in batch.values() if torch.is_tensor(v))
                if size <= self.budget:
                    built.append(batch)
                else:
                    built, self.too_big = None, True
            yield batch
        if built is not None:  # only a complete pass is kept
            self.batches, self.nbytes = built, size

    @property
    def cached(self) -> bool:
        return self.batches is not None


def eval_loader(backbone: Backbone, encoded: EncodedSplit, batch_size: int,
                indices: Sequence[int] | None = None) -> EvalBatches:
    """Left-padded prompt batches over ``indices`` (default: every record; a rank's shard when the
    evaluation is sharded). Batches carry each record's index in ``encoded``. The same arguments give
    the same EvalBatches object, whose batches are collated once (see EvalBatches)."""
    # Sort by prompt length so a batch wastes little padding; predictions are put back in order.
    pool = range(len(encoded)) if indices is None else indices
    order = sorted(pool, key=lambda i: len(encoded.prompt_ids[i]))
    cache = encoded.__dict__.setdefault("_eval_batches", {})
    key = (id(backbone), batch_size, tuple(order))
    if key not in cache:
        subset = torch.utils.data.Subset(encoded, order)
        cache[key] = EvalBatches(DataLoader(subset, batch_size=batch_size, shuffle=False,
                                            collate_fn=Collator(backbone, train=False)))
    return cache[key]


class ConcatEncoded(Dataset):
    """Several encoded splits as one (multitask joint training, stage-0 mixes)."""

    def __init__(self, parts: Sequence[EncodedSplit]):
        self.parts = list(parts)
        self.offsets = []
        total = 0
        for p in self.parts:
            self.offsets.append(total)
            total += len(p)
        self.total = total
        self.prompt_ids = [ids for p in self.parts for ids in p.prompt_ids]

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i: int) -> dict[str, Any]:
        k = bisect.bisect_right(self.offsets, i) - 1
        item = self.parts[k][i - self.offsets[k]]
        return {**item, "index": i}
