"""An lm-evaluation-harness model for any checkpoint of a continual run (registered as ``cmb``).

``lm_eval --model cmb --model_args run=RUN_DIR,after_task=K`` (through ``python -m bench.lmeval.cli``,
which registers this model first) or ``CMBLM(backbone=..., model=..., method=...)`` in code.

Everything the harness does at test time is done the same way here, so a CoIN task scored through
lm-eval gets the harness's number (``tests/bench/test_lmeval.py``):

- ``generate_until``: the context is the record's prompt; it is wrapped in the backbone's
  conversation template with the image placeholder (``Backbone.prompt_ids``), images go through the
  backbone's image processor (``bench.train.data.Collator``), batches are built by ``bench.train.data.eval_loader``
  and decoded greedily by ``bench.decode.generate.generate`` with the method's ``before_forward`` hook; the text
  is cut at the first ``until`` string; ``max_gen_toks`` defaults to the run's ``max_new_tokens``.
- ``loglikelihood``: ``(context, continuation[, {"visual": [...]}])``; with the template (default) the
  context is encoded as a prompt and the continuation as the answer is in training (tokenised on its
  own, so ``" " + answer`` gives exactly the training answer tokens); ``template=False`` encodes
  ``<s> + context + continuation`` as raw text (lm-eval's usual causal-LM split).
- ``loglikelihood_rolling``: raw text (``<s>`` then the text) in lm-eval's rolling windows of the
  decoder's context length; with an image, every window starts with ``<s>`` and the image block.

Routing is task-agnostic: the method's ``before_forward(batch, "prefill")`` sees the prompt (scoring
batches carry ``labels`` = -100 on the prompt part, so prompt-based locators such as CMoE's PTL route
from the prompt only, as they do before decoding). Oracle ablations get no task id here.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from contextlib import nullcontext
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from bench.train.data import IGNORE, EncodedSplit, eval_loader
from bench.run.restore import load_after_task
from bench.run.setup import make_accelerator
from tasks.types import Record
from bench.decode.generate import generate, method_hooks

log = logging.getLogger(__name__)

MODEL_NAME = "cmb"


class _CPUAccelerator:
    """What ``bench.decode.generate.generate`` needs of an accelerator, for objects built without a run config."""

    def __init__(self, device: torch.device):
        self.device = device

    def autocast(self):
        return nullcontext()


@register_model(MODEL_NAME)
class CMBLM(LM):
    """A continual run's model (backbone + method state after a task) behind lm-eval's model API."""

    MULTIMODAL = True  # lm-eval sends {"visual": [PIL images]} for tasks with doc_to_image

    def __init__(self, run: str | None = None, after_task: int | str | None = None, *, backbone=None, model=None,
                 method=None, cfg=None, accelerator=None, batch_size: int | str | None = None,
                 max_gen_toks: int | None = None, template: bool | str = True, max_length: int | None = None,
                 cache_dir: str | None = None, **ignored: Any):
        super().__init__()
        if run is not None:
            if backbone is not None or model is not None:
                raise ValueError("give either run=RUN_DIR (with after_task) or backbone/model/method objects, not both")
            loaded = load_after_task(run, None if after_task in (None, "") else int(after_task), cache_dir=cache_dir)
            backbone, model, method, cfg = loaded.backbone, loaded.model, loaded.method, loaded.cfg
            accelerator = accelerator or loaded.accelerator
        if backbone is None or method is None:
            raise ValueError("CMBLM needs run=RUN_DIR,after_task=K or the backbone and method objects")
        self.backbone, self.method, self.cfg = backbone, method, cfg
        self.model = model if model is not None else backbone.model
        if accelerator is None:
            if cfg is not None:
                accelerator = make_accelerator(cfg)
            else:
                accelerator = _CPUAccelerator(next(self.model.parameters()).device)
        self.accelerator = accelerator
        self._device = accelerator.device
        self.model.to(self._device).eval()
        default_batch = cfg.eval_batch_size if cfg is not None else 16
        self.batch_size = int(batch_size) if str(batch_size or "").isdigit() else default_batch
        self.max_gen_toks = int(max_gen_toks) if max_gen_toks is not None else (cfg.max_new_tokens if cfg is not None else 24)
        self.template = template if isinstance(template, bool) else str(template).lower() in ("1", "true", "yes")
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.max_length = int(max_length) if max_length is not None else int(text_config.max_position_embeddings)
        if ignored:
            log.debug("cmb: ignoring model args %s", sorted(ignored))

    # --- lm-eval plumbing --------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return str(self.backbone.description.get("tokenizer_hash", "cmb"))

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    def _encode(self, text: str) -> list[int]:
        return self.backbone.tokenizer(text, add_special_tokens=False)["input_ids"]

    @staticmethod
    def _split_args(args: tuple) -> tuple[tuple, Any]:
        """(lm-eval arguments without the multimodal dict, the one image or None)."""
        if args and isinstance(args[-1], dict) and ("visual" in args[-1] or "audio" in args[-1]):
            visuals = [v for v in (args[-1].get("visual") or []) if v is not None]
            if len(visuals) > 1:
                raise ValueError(f"cmb: a LLaVA-1.5 prompt holds one image, got {len(visuals)}")
            image = visuals[0] if visuals else None
            if image is not None and getattr(image, "mode", "RGB") != "RGB":
                image = image.convert("RGB")  # what tasks.types._row_to_record does for the harness
            return args[:-1], image
        return args, None

    def _image_block(self) -> list[int]:
        return [self.backbone.image_token_id] * self.backbone.num_image_tokens

    # --- generation --------------------------------------------------------------------------------
    def generate_until(self, requests: Sequence, disable_tqdm: bool = False) -> list[str]:
        """Greedy answers, batched and decoded exactly as ``bench.run.evaluation.evaluate_all`` does."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        parsed = []
        for i, req in enumerate(requests):
            (context, gen_kwargs), image = self._split_args(req.args)
            gen_kwargs = dict(gen_kwargs or {})
            if gen_kwargs.get("do_sample"):
                raise ValueError("cmb decodes greedily only (do_sample must be false)")
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            parsed.append((context, image))
            groups[(tuple(until), max_new)].append(i)
        out: list[str] = [""] * len(requests)
        for (until, max_new), members in tqdm(groups.items(), desc="cmb generate_until", disable=disable_tqdm):
            records = [Record(question_id=str(i), prompt=parsed[i][0], answer="", image=parsed[i][1]) for i in members]
            has_image = [r.image is not None for r in records]
            encoded = EncodedSplit(records, self.backbone.prompt_ids([r.prompt for r in records], has_image),
                                   [[] for _ in records], has_image)
            loader = eval_loader(self.backbone, encoded, self.batch_size)
            ids = generate(self.model, loader, eos_id=self.backbone.eos_id, max_new_tokens=max_new,
                           accelerator=self.accelerator, **method_hooks(self.method))
            for local, i in enumerate(members):
                text = self.backbone.decode(ids[local])
                for stop in until:
                    if stop:
                        text = text.split(stop)[0]
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    # --- scoring -----------------------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        items = []
        for req in requests:
            (context, continuation), image = self._split_args(req.args)
            items.append(self._pair(context, continuation, image))
        results = self._score(items, disable_tqdm)
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return results

    def _pair(self, context: str, continuation: str, image) -> tuple[list[int], list[int], Any]:
        """(context ids, continuation ids, image) for one loglikelihood request."""
        if self.template:
            ctx = self.backbone.prompt_ids([context], [image is not None])[0]
            cont = self._encode(continuation)  # tokenised on its own, as Backbone.answer_ids does
        else:
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:  # lm-eval's convention: word-boundary spaces belong to the continuation
                context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
            head = [self.backbone.tokenizer.bos_token_id] + (self._image_block() if image is not None else [])
            ctx = head + self._encode(context)
            cont = (head + self._encode(context + continuation))[len(ctx):]
        if not cont:
            raise ValueError(f"cmb: empty continuation for context {context[-40:]!r}")
        overflow = len(ctx) + len(cont) - self.max_length
        if overflow > 0 and image is None:
            ctx = ctx[overflow:]  # left-truncate text-only contexts to the decoder's length
        return ctx, cont, image

    def loglikelihood_rolling(self, requests: Sequence, disable_tqdm: bool = False) -> list[float]:
        bos = self.backbone.tokenizer.bos_token_id
        items, owner = [], []
        for n, req in enumerate(requests):
            (text,), image = self._split_args(req.args)
            head = [bos] + self._image_block() if image is not None else []
            # Text-only: lm-eval's standard windows; with an image every window is prefixed by <s> + image.
            width = self.max_length - len(head)
            if width < 2:
                raise ValueError(f"cmb: the image block leaves no room in a {self.max_length}-token context")
            for first, window in enumerate(get_rolling_token_windows(self._encode(text), bos, width, 1)):
                ctx, cont = make_disjoint_window(window)
                if head:
                    ctx = head + (ctx[1:] if first == 0 else ctx)
                items.append((ctx, cont, image))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owner, self._score(items, disable_tqdm)):
            totals[n] += logprob
        for req, res in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, res)
        return totals

    @torch.no_grad()
    def _score(self, items: list[tuple[list[int], list[int], Any]], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Sum of log-probabilities of each continuation after its context, and whether greedy decoding
        would produce it; longest first, right-padded batches of ``batch_size``."""
        order = sorted(range(len(items)), key=lambda i: -(len(items[i][0]) + len(items[i][1])))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(items)
        pad = self.backbone.pad_id
        for start in tqdm(range(0, len(order), self.batch_size), desc="cmb loglikelihood", disable=disable_tqdm):
            chunk = order[start:start + self.batch_size]
            seqs = [items[i][0] + items[i][1] for i in chunk]
            width = max(map(len, seqs))
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
            labels = torch.tensor([[IGNORE] * len(items[i][0]) + items[i][1] + [IGNORE] * (width - len(s))
                                   for i, s in zip(chunk, seqs)])
            batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
            images = [items[i][2] for i in chunk if items[i][2] is not None]
            if images:
                batch["pixel_values"] = self.backbone.pixel_values(images)
            batch = {k: v.to(self._device) for k, v in batch.items()}
            self.method.before_forward(batch, "prefill")
            positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            with self.accelerator.autocast():
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    pixel_values=batch.get("pixel_values"), position_ids=positions).logits
            logprobs = F.log_softmax(logits.float(), dim=-1)
            for row, i in enumerate(chunk):
                ctx, cont, _ = items[i]
                at = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=logprobs.device)
                target = torch.tensor(cont, device=logprobs.device)
                step = logprobs[row, at]
                results[i] = (float(step.gather(-1, target[:, None]).sum()), bool((step.argmax(-1) == target).all()))
        return results
