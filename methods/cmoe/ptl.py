"""LLaVA-CMoE's Probabilistic Task Locator (arXiv 2503.21227): one small VAE per
task on the base model's last-prompt-token feature; at test time every
sample goes to the task whose z-scored reconstruction error is lowest.

    F_end(x)  = last-layer hidden state (after the final norm) of the base model at the last prompt token
    VAE_t     = encoder d -> h -> (mu, logvar) [z], decoder z -> h -> d;
                loss = ||F - F_hat||^2 / d + beta_KL * KL(q(z|F) || N(0, I))
    r_t(x)    = ||F - F_hat(mu)||^2 / d          (deterministic: decode the posterior mean)
    m_t, s_t  = mean, std of r_t over task t's training prompts (stored; the prompts are not)
    tau*(x)   = argmin_t (r_t(x) - m_t) / s_t

"Base model" = the decoder with every MoE layer reduced to its frozen FFN: ``experts_bypassed`` swaps
each ``MoEFFN`` out for the ``LoRAExperts.base`` it wraps for the duration of one forward. WHY a swap
rather than zeroing expert weights or hooking: it runs exactly the stage-0 computation (no router, no
expert, no usage counting), touches no parameter, and is undone in a ``finally`` even on errors.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from bench.decode.frozen import batch_digest, modules_fingerprint
from bench.moe import MoEFFN, decoder_layers

IGNORE = -100


# --------------------------------------------------------------------------------------------------
# the feature F_end
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def experts_bypassed(model: nn.Module, layers: Mapping[int, MoEFFN]) -> Iterator[None]:
    """Within the block, decoder layer i's FFN is the frozen base FFN of ``layers[i]`` (residual-base
    LoRA experts: ``y = FFN(h) + sum w * Delta(h)``, so dropping the sum is the stage-0 model)."""
    blocks = decoder_layers(model)
    swapped = []
    try:
        for i, moe in layers.items():
            base = moe.experts.base
            if base is None:
                raise ValueError(f"MoE layer {i} has no frozen base FFN to fall back to")
            blocks[i].mlp = base
            swapped.append(i)
        yield
    finally:
        for i in swapped:
            blocks[i].mlp = layers[i]


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Per row, the position of the last 1 in a [B, T] mask (left or right padding alike)."""
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (pos * mask.long()).argmax(dim=1)


@torch.no_grad()
def base_last_token_features(model: nn.Module, layers: Mapping[int, MoEFFN], batch: Mapping[str, Any],
                             device: torch.device, prompt_only: bool = True) -> torch.Tensor:
    """F_end [B, d] (float32) for a batch, from the base model.

    Training batches (``labels`` present, right-padded ``prompt + answer``) are cut to their prompt:
    attention mask & labels == -100, then the columns after the longest prompt are dropped; with a
    causal decoder this equals running the prompt alone. Evaluation batches are left-padded prompts.
    Positions come from the mask (as ``bench.decode.generate.generate`` does), so both layouts give a prompt
    the same positions and hence the same feature.
    """
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device).bool()
    if prompt_only and "labels" in batch:
        mask = mask & (batch["labels"].to(device) == IGNORE)
        width = int(last_index(mask).max()) + 1
        ids, mask = ids[:, :width], mask[:, :width]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    kwargs: dict[str, Any] = dict(input_ids=ids, attention_mask=mask.long(), position_ids=positions,
                                  use_cache=False)
    if batch.get("pixel_values") is not None:
        kwargs["pixel_values"] = batch["pixel_values"].to(device)
    inner = getattr(model, "model", model)  # LlavaModel: skips the LM head, returns the final-norm states
    was_training = model.training
    model.eval()
    try:
        with experts_bypassed(model, layers):
            hidden = inner(**kwargs).last_hidden_state
    finally:
        model.train(was_training)
    rows = torch.arange(ids.shape[0], device=device)
    return hidden[rows, last_index(mask)].float()


class BaseFeatureCache:
    """F_end of prompt batches, reused while the base model is provably the same function.

    The base model (stage 0 with every MoE layer reduced to its frozen FFN) never trains in
    LLaVA-CMoE, and a run evaluates the same test batches T+1 times, so without this every row
    recomputes the same F_end with one extra full prefill per batch. An entry is keyed by the batch's
    content (``bench.decode.frozen.batch_digest``) and valid only under the fingerprint of the base model it
    was computed with (``bench.decode.frozen.modules_fingerprint`` over the model with the experts bypassed:
    every parameter frozen, same tensors and version counters, no hooks), plus device and thread
    count; anything else recomputes. The features returned are the very tensors first computed, so
    routing, and hence every prediction, is identical to recomputing them."""

    KEYS = ("input_ids", "attention_mask", "labels", "pixel_values")

    def __init__(self, max_batches: int = 256):
        self.max_batches = max_batches
        self.fingerprint: tuple | None = None
        self.store: dict[bytes, torch.Tensor] = {}
        self.hits = self.misses = 0

    def features(self, model: nn.Module, layers: Mapping[int, MoEFFN], batch: Mapping[str, Any],
                 device: torch.device) -> torch.Tensor:
        with experts_bypassed(model, layers):
            # F_end puts the model in eval mode itself, so the modules' mode is not part of it
            parts = modules_fingerprint((("model", model),), require_eval=False)
        fingerprint = None if parts is None else (str(device), torch.get_num_threads(), *parts)
        if fingerprint is None or fingerprint != self.fingerprint:
            self.store.clear()
            self.fingerprint = fingerprint
        key = batch_digest(batch, self.KEYS) if fingerprint is not None else None
        if key is not None and key in self.store:
            self.hits += 1
            return self.store[key]
        self.misses += 1
        feats = base_last_token_features(model, layers, batch, device)
        if key is not None:
            if len(self.store) >= self.max_batches:
                self.store.clear()
            self.store[key] = feats
        return feats


# --------------------------------------------------------------------------------------------------
# one task's VAE
# --------------------------------------------------------------------------------------------------
class TaskVAE(nn.Module):
    """MLP VAE on F_end: d -> hidden -> (mu, logvar) [latent]; latent -> hidden -> d.

    With ``standardize`` the VAE works on ``(F - mean_t) / std_t`` where mean_t / std_t [d] are
    buffers fitted on its own task (two d-vectors of statistics, not records). WHY: the last-token
    states of a real LLM have a few huge dimensions ("massive activations") that would dominate an
    unscaled MSE; per-task scaling also makes features of other tasks land far from the task's data.
    """

    def __init__(self, d: int, hidden: int = 64, latent: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.register_buffer("feat_mean", torch.zeros(d))
        self.register_buffer("feat_std", torch.ones(d))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.feat_mean) / self.feat_std

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(self.normalize(x)).chunk(2, dim=-1)
        return mu, logvar

    def loss(self, x: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """MSE (mean over features and samples) + beta * KL (summed over z, mean over samples)."""
        target = self.normalize(x)
        mu, logvar = self.encoder(target).chunk(2, dim=-1)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * (0.5 * logvar).exp()
        mse = F.mse_loss(self.decoder(z), target)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=-1).mean()
        return mse + kl_weight * kl

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """r(x) [N]: mean squared error of the decoded posterior mean (deterministic at test time)."""
        target = self.normalize(x)
        mu, _ = self.encoder(target).chunk(2, dim=-1)
        return (self.decoder(mu) - target).pow(2).mean(dim=-1)


def fit_task_vae(features: torch.Tensor, *, hidden: int, latent: int, kl_weight: float, epochs: int,
                 lr: float, batch_size: int, standardize: bool, seed: int) -> tuple[TaskVAE, float]:
    """Train a ``TaskVAE`` on ``features`` [N, d] with Adam; returns it (eval mode, frozen) and the last
    epoch's mean loss. Private generators make the fit reproducible and leave the global RNG alone."""
    x = features.detach().float()
    with torch.random.fork_rng(devices=[]):   # seeded init on CPU; the global RNG is left as it was
        torch.manual_seed(seed)
        vae = TaskVAE(x.shape[1], hidden, latent)
    vae = vae.to(x.device)
    if standardize:
        vae.feat_mean.copy_(x.mean(dim=0))
        # population std with a floor: a constant dimension must not blow up the scaled error
        vae.feat_std.copy_(x.std(dim=0, unbiased=False).clamp(min=1e-4 * float(x.abs().max().clamp(min=1e-12))))
    order_gen = torch.Generator(device="cpu").manual_seed(seed)
    noise_gen = torch.Generator(device=x.device).manual_seed(seed)  # reparameterisation noise
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    vae.train()
    last = float("nan")
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=order_gen).to(x.device)
        total = torch.zeros((), device=x.device)
        for chunk in order.split(batch_size):
            loss = vae.loss(x.index_select(0, chunk), kl_weight, noise_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * chunk.numel()  # no host sync per step
        last = float(total) / x.shape[0]
    vae.eval()
    vae.requires_grad_(False)
    return vae, last


# --------------------------------------------------------------------------------------------------
# the locator over all tasks
# --------------------------------------------------------------------------------------------------
class TaskLocator(nn.Module):
    """VAE_1..VAE_T with their error statistics m_t, s_t; ``predict`` = argmin of z-scored errors."""

    def __init__(self) -> None:
        super().__init__()
        self.vaes = nn.ModuleList()
        self.register_buffer("err_mean", torch.zeros(0))
        self.register_buffer("err_std", torch.zeros(0))

    def __len__(self) -> int:
        return len(self.vaes)

    def add(self, vae: TaskVAE, features: torch.Tensor) -> tuple[float, float]:
        """Append VAE_t and its error statistics on task t's features (the features are not kept)."""
        err = vae.reconstruction_error(features.float())
        m = err.mean()
        # population std, floored: a task whose errors are all equal must still give finite z-scores
        s = err.std(unbiased=False).clamp(min=1e-6 * float(m.abs().clamp(min=1e-12)))
        self.vaes.append(vae)
        self.err_mean = torch.cat([self.err_mean.to(m.device), m.reshape(1)])
        self.err_std = torch.cat([self.err_std.to(s.device), s.reshape(1)])
        return float(m), float(s)

    @torch.no_grad()
    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """[N, T] z-scored reconstruction errors (r_t(x) - m_t) / s_t."""
        err = torch.stack([v.reconstruction_error(features) for v in self.vaes], dim=1)
        return (err - self.err_mean.to(err.device)) / self.err_std.to(err.device)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """tau*(x) [N] (long): the task index with the lowest z-scored error."""
        return self.scores(features).argmin(dim=1)

    def rebuild(self, d: int, num_tasks: int, hidden: int, latent: int) -> None:
        """Empty VAEs of the right shapes so a saved ``state_dict`` can be loaded into them."""
        self.vaes = nn.ModuleList(TaskVAE(d, hidden, latent) for _ in range(num_tasks))
        self.err_mean = torch.zeros(num_tasks)
        self.err_std = torch.zeros(num_tasks)
        self.requires_grad_(False)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

