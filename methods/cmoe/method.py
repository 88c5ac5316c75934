"""``cmoe``: LLaVA-CMoE (Zhao et al., arXiv 2503.21227, "LLaVA-CMoE: Towards Continual Mixture of
Experts for Large Vision-Language Models"). ``cmoe-oracle``: the same with the true task's router at
test time (ablation).

Per MoE layer l (every decoder layer by default) the FFN becomes a set of LoRA experts on the frozen
FFN (``FFN_e``: the FFN with expert e's LoRA on gate, up and down), routed per task:
``y = sum_{e in TopK} (p_e / sum_K p) FFN_e(h)`` with ``p = softmax(R_l^tau h)``.

* task 1: N0 = 2 experts, router R^1, no probing; everything new trains.
* task t >= 2 (PGKE, ``pgke.py``), trained in two phases by the shared trainer: old experts and
  routers frozen; the *probe phase* trains a probe expert + probe router ``[R^{t-1}; new row]`` on a
  10% subset for 10% of the step budget (LM + 0.01 aux, its own schedule); layers whose probe
  frequency exceeds ``mean - alpha * std`` get copies of their N_s most-used old experts; every
  layer gets R^t (a trainable copy of R^{t-1}, plus one row per new expert); probes are discarded;
  the *task phase* trains the new experts and R^t of every layer on the whole task.
* after task t (PTL, ``ptl.py``): VAE_t on the base model's last-prompt-token state of task t's
  training prompts, with the mean / std of its reconstruction error; nothing of the data is kept.
* test time: each sample's prompt picks tau* = argmin_t z-scored error, and every layer routes that
  sample with R^{tau*} (per-sample router choice, kept through decoding).

Hyper-parameters (``--set key=value``; [INFERRED] = no source fixes it):
    moe_layers="all"  top_k=2  aux_loss_coef=0.01  dispatch="fast"   (dropless)
    expert_type="lora-ffn"  LoRA on the FFN's gate, up and down ("delta": one output-side LoRA map).
    num_initial_experts=2   N0, task 1's experts per layer.
    lora_rank=32, lora_alpha=64.0  [INFERRED] rank of each LoRA expert (the paper's is not found):
                            seq-ft's rank, so a new expert per layer trains 3r(d + d_ff) parameters,
                            an expansion of every layer ~0.6x seq-ft's LoRA and task 1 ~1.2x.
    probing=True            false = ablation: every layer expands (naive expansion with per-task
                            routers); the copy source is still the expert R^{t-1} uses most on the
                            probe subset (one measuring pass, no probe), so only layer choice differs.
    probe_data_fraction=0.1, probe_step_fraction=0.1   probe subset / steps (>= 1 record, >= 1 step).
    probe_lr=None           [INFERRED] None = the run's task lr.
    probe_tokens="loss"     [INFERRED] which tokens the frequencies count: the positions whose next token
                            is supervised ("loss"; a top-layer router row gets gradient only there) or
                            every real token, image and prompt included ("all").
    threshold_reading="A"   A: mean/std over layers' probe frequencies; B: over the layer's experts
                            (old + probe). Population std [INFERRED]; expand iff f > theta (strict,
                            up to a 1e-9 rounding tolerance).
    threshold_alpha=1.0     alpha [INFERRED: the value is not found].
    new_experts=2           N_s, experts added per expanded layer: copies of the N_s most-used old
                            experts (N_s = 1: the paper's "copy of the most-used expert"). 2 [INFERRED:
                            the paper treats N_s as a hyper-parameter] gives an expansion of every
                            layer the trainable size of naive expansion's K = 2 new experts (~1.2x
                            seq-ft's LoRA); with N_s = 1 a task trains at most ~0.6x, and ImageNet stayed
                            at chance + 4 right after training on it (cmoe-oracle, seed 0).
    new_expert_routing="replace"  [INFERRED] how R^t treats a new expert and its source:
                            "replace": the new row is the source's row and R^t masks the source, so
                            R^t starts as exactly R^{t-1}'s function and the trainable copy takes all
                            of its source's tokens; "split": the paper's literal reading, new row =
                            source row + noise next to the routable source, which leaves about half
                            of every such token on the frozen source.
    router_init_noise=0.01  [INFERRED] "split" only: std of the noise on a copied router row,
                            relative to the row's std (scale-free across model widths).
    vae_hidden=64, vae_latent=16, vae_kl_weight=1e-3   the PTL VAE.
    vae_epochs=50, vae_lr=1e-3, vae_batch_size=64      [INFERRED] its Adam fit.
    vae_standardize=True    [INFERRED] each VAE z-scores its input with its own task's feature
                            mean/std (see ``ptl.TaskVAE``).
    ptl_max_samples=1000    cap on the training prompts a VAE is fitted on, the first ones in the task's
                            record order (0 = all): F_end needs a full base-model forward per prompt,
                            which at 2,000 prompts cost more per task than the task's evaluation row.

Other [INFERRED] choices: MoE layers are installed at task 1 (row 0 of the matrix is the dense base
model); frequencies are measured after probe training on the probe subset (``probe_tokens``); the
most-used expert is the argmax of those frequencies over old experts; error statistics m_t, s_t are
taken on the training prompts the VAE was fitted on; F_end = final-norm hidden state of the last
prompt token with the experts bypassed (``ptl.experts_bypassed``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from bench.moe import USAGE_TOKENS, LinearRouter, MoEFFN, measure_usage, set_router_choice, subset_loader
from methods import register
from methods.cmoe.pgke import (READINGS, ROUTINGS, attach_probe, detach_probe, expand_layer, expansion_thresholds,
                               layers_to_expand)
from methods.cmoe.ptl import BaseFeatureCache, TaskLocator, base_last_token_features, fit_task_vae
from methods.base import TrainingPhase, trainable_parameters
from methods.moe_base import LoRAExpertHParams, MoEMethod, lora_experts

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass
class CMoEHParams(LoRAExpertHParams):
    num_initial_experts: int = 2
    probing: bool = True
    probe_data_fraction: float = 0.1
    probe_step_fraction: float = 0.1
    probe_lr: float | None = None
    threshold_reading: str = "A"
    threshold_alpha: float = 1.0
    probe_tokens: str = "loss"
    search: ClassVar[dict[str, tuple]] = {"threshold_alpha": (0.5, 1.0, 1.5), "new_experts": (1, 2)}
    new_experts: int = 2
    new_expert_routing: str = "replace"
    router_init_noise: float = 0.01
    vae_hidden: int = 64
    vae_latent: int = 16
    vae_kl_weight: float = 1e-3
    vae_epochs: int = 50
    vae_lr: float = 1e-3
    vae_batch_size: int = 64
    vae_standardize: bool = True
    ptl_max_samples: int = 1000

    def validate(self) -> None:
        super().validate()
        checks = {
            "num_initial_experts >= top_k": self.num_initial_experts >= self.top_k,
            f"new_expert_routing in {ROUTINGS}": self.new_expert_routing in ROUTINGS,
            "0 < probe_data_fraction <= 1": 0 < self.probe_data_fraction <= 1,
            "0 < probe_step_fraction <= 1": 0 < self.probe_step_fraction <= 1,
            "probe_lr > 0 or none": self.probe_lr is None or self.probe_lr > 0,
            f"threshold_reading in {READINGS}": self.threshold_reading in READINGS,
            f"probe_tokens in {USAGE_TOKENS}": self.probe_tokens in USAGE_TOKENS,
            "threshold_alpha finite": math.isfinite(self.threshold_alpha),
            "new_experts >= 1": self.new_experts >= 1,
            "new_experts <= num_initial_experts with replace routing (each new expert replaces one of the "
            "task router's routable experts)": self.new_expert_routing != "replace"
            or self.new_experts <= self.num_initial_experts,
            "router_init_noise >= 0": self.router_init_noise >= 0,
            "vae_hidden, vae_latent, vae_epochs, vae_batch_size >= 1":
                min(self.vae_hidden, self.vae_latent, self.vae_epochs, self.vae_batch_size) >= 1,
            "vae_kl_weight >= 0": self.vae_kl_weight >= 0,
            "vae_lr > 0": self.vae_lr > 0,
            "ptl_max_samples >= 0": self.ptl_max_samples >= 0,
        }
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid cmoe hyper-parameters ({self}): need {', '.join(failed)}")


# F_end is computed without gradients, so a batch far larger than a training batch fits; 64 prompts per
# forward instead of 8 took a run's locator fitting from ~50 s to ~40 s (the VAE fits are the rest).
FEATURE_BATCH = 64


def feature_loader(train_loader) -> DataLoader:
    """The task's training records in record order (so ``ptl_max_samples`` takes the first ones, the
    same whatever the run seed), ``FEATURE_BATCH`` at a time, with the task loader's collate function."""
    return DataLoader(train_loader.dataset, batch_size=max(FEATURE_BATCH, train_loader.batch_size or 1),
                      shuffle=False, collate_fn=train_loader.collate_fn)


def _r6(x: float) -> float:
    return round(float(x), 6)


@register("cmoe")
class CMoE(MoEMethod):
    HParams = CMoEHParams

    def __init__(self, hparams: CMoEHParams | None = None):
        super().__init__(hparams)
        self.locator = TaskLocator()
        self.task_names: list[str] = []
        self._train_choice = 0          # the router index training forwards use (R^t, or the probe's)
        self._extending = False         # the current task grows an existing MoE (task t >= 2)
        self._probe_report: dict[str, Any] | None = None
        self._growth_report: dict[str, Any] = {}
        self._ptl_report: dict[str, Any] | None = None
        self._histograms: list[list[int]] = []  # predicted-task counts per prefill call, not yet reported
        self.feature_cache = BaseFeatureCache()  # F_end of evaluation prompts across evaluation rows

    # --- construction ----------------------------------------------------------------------------
    def build_layer(self, index: int, mlp: nn.Module) -> MoEFFN:
        """N0 LoRA experts (``expert_type``) on the frozen FFN and router R^1; dropless top-k."""
        hp = self.hp
        experts = lora_experts(mlp, hp.num_initial_experts, hp)
        router = LinearRouter(experts.d_in, hp.num_initial_experts, device=mlp.gate_proj.weight.device)
        return MoEFFN(experts, router, top_k=hp.top_k, dispatch=hp.dispatch)

    @property
    def tasks_trained(self) -> int:
        """Tasks with both a router and a VAE (i.e. past ``end_task``)."""
        return min(len(self.locator), min((len(m.routers) for m in self.layers.values()), default=0))

    def _moe_numel(self) -> int:
        """Parameters of the MoE layers beyond the frozen FFNs (experts + routers)."""
        return sum(p.numel() for m in self.layers.values() for n, p in m.named_parameters()
                   if not n.startswith("experts.base."))

    # --- lifecycle -------------------------------------------------------------------------------
    def begin_task(self, task_index: int, task, train_loader) -> None:
        self.task_names.append(str(getattr(task, "name", task)))
        self._probe_report = None
        self._extending = bool(self.layers)
        if not self.layers:
            self.install(self.model)      # task 1: N0 experts + R^1 per layer, all trainable
            self._growth_report = {"expanded_layers": sorted(self.layers), "added_parameters": self._moe_numel(),
                                   "added_parameters_if_every_layer_expanded": self._moe_numel()}
            self._train_choice = 0
        else:
            self.freeze_moe()
        self.reset_usage()

    def training_phases(self, task_index: int, task, train_loader, steps: int):
        """Task 1: one phase. Task t >= 2 (PGKE): a probe phase on a subset (its own steps, lr and
        schedule; probes discarded after it), the expansion decision, then the task phase."""
        if self._extending:
            yield from self._extend_phases(task_index, train_loader)
        self.reset_usage()
        yield TrainingPhase("task", trainable_parameters(self.model), steps)

    def _extend_phases(self, task_index: int, train_loader):
        """PGKE for task t >= 2: probe (or not), decide, copy experts, build R^t in every layer."""
        hp = self.hp
        before = self._moe_numel()
        prev = {i: len(m.routers) - 1 for i, m in self.layers.items()}
        subset = subset_loader(train_loader, hp.probe_data_fraction, seed=self.ctx.run_seed * 1000 + task_index)
        report: dict[str, Any] = {"enabled": hp.probing, "records": len(subset.dataset)}
        if hp.probing:
            probe_router = {i: attach_probe(layer, prev[i]) for i, layer in self.layers.items()}
            self._train_choice = next(iter(probe_router.values()))  # the same index in every layer
            params = [p for layer in self.layers.values() for p in layer.parameters() if p.requires_grad]
            steps = max(1, round(hp.probe_step_fraction * self.ctx.steps_per_task))
            try:
                yield TrainingPhase("probe", params, steps, loader=subset, lr=hp.probe_lr, counts_as_trained=False)
                freqs = measure_usage(self.model, self.layers, subset, self.ctx.device,
                                      lambda b: self._prepare_train(b, probe_router), tokens=hp.probe_tokens)
            finally:
                for layer in self.layers.values():
                    detach_probe(layer)
            old = {i: f[:-1] for i, f in freqs.items()}
            probe_freq = {i: float(f[-1]) for i, f in freqs.items()}
            thresholds = expansion_thresholds(probe_freq, {i: f.tolist() for i, f in freqs.items()},
                                              hp.threshold_alpha, hp.threshold_reading)
            expand = layers_to_expand(probe_freq, thresholds)
            report.update(steps=steps, lr=hp.probe_lr, reading=hp.threshold_reading, alpha=hp.threshold_alpha)
        else:
            old = measure_usage(self.model, self.layers, subset, self.ctx.device,
                                lambda b: self._prepare_train(b, prev), tokens=hp.probe_tokens)
            probe_freq, thresholds, expand = {}, {}, {i: True for i in self.layers}
        layers_report, naive_extra = {}, 0
        for i, layer in self.layers.items():
            # the N_s most-used old experts, most used first (stable: ties keep the lower id)
            sources = torch.argsort(old[i], descending=True, stable=True)[: hp.new_experts].tolist()
            self._train_choice = expand_layer(layer, prev[i], sources if expand[i] else None,
                                              hp.new_expert_routing, hp.router_init_noise)
            if not expand[i]:  # what naive expansion would have added here
                naive_extra += sum(layer.experts.expert_numel(e) + layer.experts.d_in for e in sources)
            entry = {"expanded": bool(expand[i]), "source_experts": sources,
                     "expert_frequencies": [_r6(f) for f in (freqs[i] if hp.probing else old[i]).tolist()]}
            if hp.probing:
                entry.update(probe_frequency=_r6(probe_freq[i]), threshold=_r6(thresholds[i]))
            layers_report[str(i)] = entry
        report["layers"] = layers_report
        added = self._moe_numel() - before
        self._probe_report = report
        self._growth_report = {"expanded_layers": sorted(i for i, e in expand.items() if e),
                               "added_parameters": added,
                               "added_parameters_if_every_layer_expanded": added + naive_extra}

    def _prepare_train(self, batch: dict[str, torch.Tensor], choice: Mapping[int, int]) -> None:
        super().before_forward(batch, "train")   # image-token mask
        for i, layer in self.layers.items():
            layer.set_router_choice(choice[i])

    def end_task(self, task_index: int, task, train_loader) -> None:
        """PTL: fit VAE_t on F_end of task t's training prompts, keep (m_t, s_t); freeze task t."""
        hp = self.hp
        start = time.perf_counter()
        feats, n = [], 0
        for batch in feature_loader(train_loader):
            feats.append(base_last_token_features(self.model, self.layers, batch, self.ctx.device))
            n += feats[-1].shape[0]
            if hp.ptl_max_samples and n >= hp.ptl_max_samples:
                break
        # local only: no feature of task t outlives this call (no replay; tested)
        features = torch.cat(feats)[: hp.ptl_max_samples or None]
        del feats
        vae, loss = fit_task_vae(features, hidden=hp.vae_hidden, latent=hp.vae_latent, kl_weight=hp.vae_kl_weight,
                                 epochs=hp.vae_epochs, lr=hp.vae_lr, batch_size=hp.vae_batch_size,
                                 standardize=hp.vae_standardize, seed=self.ctx.run_seed * 1000 + task_index)
        m, s = self.locator.add(vae, features)
        self._ptl_report = {"samples": int(features.shape[0]), "vae_final_loss": _r6(loss),
                            "error_mean": _r6(m), "error_std": _r6(s),
                            "vae_parameters": sum(p.numel() for p in vae.parameters()),
                            "locator_parameters": self.locator.num_parameters(),
                            "seconds": round(time.perf_counter() - start, 3)}
        self.freeze_moe()

    # --- routing ---------------------------------------------------------------------------------
    def before_forward(self, batch: dict[str, torch.Tensor], phase: str) -> None:
        super().before_forward(batch, phase)
        if not self.layers:
            return
        if phase == "train":
            set_router_choice(self.layers.values(), self._train_choice)
        elif phase == "prefill":
            choice = self.locate(batch)
            set_router_choice(self.layers.values(), choice)
            self._histograms.append(torch.bincount(choice.cpu(), minlength=max(1, self.tasks_trained)).tolist())
        # "decode": the per-sample choice made at prefill stays set (the KV cache holds that prompt)

    def locate(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The task router each sample of a prompt batch uses: PTL's choice (``ptl_locate``)."""
        return self.ptl_locate(batch)

    def ptl_locate(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """tau* per sample [B] (long, on the model's device): PTL's argmin of z-scored VAE errors."""
        B = batch["input_ids"].shape[0]
        n = self.tasks_trained
        if n <= 1:   # nothing to choose between (0: a task is mid-training; use its router)
            return torch.full((B,), 0 if n == 1 else self._train_choice, dtype=torch.long, device=self.ctx.device)
        feats = self.feature_cache.features(self.model, self.layers, batch, self.ctx.device)
        return self.locator.predict(feats).clamp(max=n - 1)

    # --- reporting -------------------------------------------------------------------------------
    def task_report(self) -> dict[str, Any]:
        report = super().task_report()
        report.update(task=self.task_names[-1] if self.task_names else None,
                      routers_per_layer={str(i): len(m.routers) for i, m in self.layers.items()},
                      probing=self._probe_report, **self._growth_report, ptl=self._ptl_report)
        if self._histograms:
            # Without the harness's evaluation_report hook, the previous evaluation's per-call
            # predicted-task histograms land here (calls in evaluation order).
            report["ptl_prefill_histograms_unreported"] = self._histograms
            self._histograms = []
        return report

    def evaluation_report(self, task_name: str) -> dict[str, Any]:
        """For the harness, after it evaluated ``task_name``: the predicted-task histogram of the prefill
        calls since the last call (i.e. this task's test prompts) and PTL's accuracy on them. The name
        is used only here, after the answers were generated; routing never sees it."""
        calls, self._histograms = self._histograms, []
        if not calls:   # e.g. row 0: no MoE layers yet, nothing was routed
            return {}
        width = max((len(h) for h in calls), default=0)
        total = [sum(h[j] for h in calls if j < len(h)) for j in range(width)]
        names = self.task_names[:width]
        out: dict[str, Any] = {"ptl_predicted": dict(zip(names, total)), "ptl_prefill_calls": len(calls)}
        if task_name in names and sum(total):
            out["ptl_accuracy"] = _r6(total[names.index(task_name)] / sum(total))
        return out

    @torch.no_grad()
    def locator_confusion(self, batches_by_task: Mapping[str, Iterable[Mapping[str, torch.Tensor]]]) -> dict[str, Any]:
        """Task-identification confusion matrix: rows = true task (the mapping's keys), columns = the
        tasks trained so far; entries = counts of samples PTL assigns there. Batches are model-ready
        (evaluation or training layout); nothing is kept."""
        n = self.tasks_trained
        columns = self.task_names[:n]
        rows, accuracy = {}, {}
        for name, batches in batches_by_task.items():
            counts = torch.zeros(max(1, n), dtype=torch.long)
            for batch in batches:
                counts += torch.bincount(self.ptl_locate(batch).cpu(), minlength=counts.numel())[: counts.numel()]
            rows[name] = counts.tolist()
            total = int(counts.sum())
            accuracy[name] = _r6(counts[columns.index(name)].item() / total) if name in columns and total else None
        return {"columns": columns, "rows": rows, "accuracy": accuracy}

    # --- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able structure + the locator's tensors (VAEs, m_t, s_t). Expert and router weights live
        in the model's own state dict; ``load_state_dict`` rebuilds the shapes they load into."""
        tensors = {f"locator.{k}": v.detach().cpu().clone() for k, v in self.locator.state_dict().items()}
        first = next(iter(self.layers.values()), None)
        return {
            "version": STATE_VERSION,
            "installed": bool(self.layers),
            "moe_layers": sorted(self.layers),
            "experts_per_layer": {str(i): m.experts.num_experts for i, m in self.layers.items()},
            "router_groups": {str(i): [[int(g.shape[0]) for g in r.groups] for r in m.routers]
                              for i, m in self.layers.items()},
            "feature_dim": first.experts.d_in if first is not None else None,
            "locator_tasks": len(self.locator),
            "task_names": list(self.task_names),
            "train_choice": self._train_choice,
            "tensors": tensors,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"cmoe state version {state.get('version')} != {STATE_VERSION}")
        self.install_if_saved(state["installed"])
        self.check_saved_layers(state["moe_layers"])
        self.regrow_layers(state["experts_per_layer"], state["router_groups"])
        self.freeze_moe()
        self.locator = TaskLocator()
        if state["locator_tasks"]:
            self.locator.rebuild(state["feature_dim"], state["locator_tasks"], self.hp.vae_hidden, self.hp.vae_latent)
            prefix = "locator."
            self.locator.load_state_dict({k[len(prefix):]: v for k, v in state["tensors"].items() if k.startswith(prefix)})
        self.locator.to(self.ctx.device)
        self.task_names = list(state["task_names"])
        self._train_choice = int(state["train_choice"])


@register("cmoe-oracle")
class CMoEOracle(CMoE):
    """Ablation: each test sample is routed with its true task's router (the latest router for a task
    not trained yet). The harness sets ``eval_task = j`` (``oracle = True``) while it evaluates task j;
    without it the method falls back to PTL, warns, and counts the fallback prefills in its report."""

    oracle = True

    def __init__(self, hparams: CMoEHParams | None = None):
        super().__init__(hparams)
        self._missing_oracle = 0

    def locate(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        n = self.tasks_trained
        if self.eval_task is None or n == 0:
            if n > 0:
                if self._missing_oracle == 0:
                    log.warning("cmoe-oracle: no task id given (eval_task not set); using PTL")
                self._missing_oracle += 1
            return super().locate(batch)
        return torch.full((batch["input_ids"].shape[0],), min(self.eval_task, n - 1), dtype=torch.long,
                          device=self.ctx.device)

    def task_report(self) -> dict[str, Any]:
        report = super().task_report()
        report["oracle_missing_prefills"] = self._missing_oracle
        return report
