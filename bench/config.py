"""Run configuration: one dataclass, a few named presets, CLI / YAML overrides.

A preset fixes the backbone and the default budget; CLI flags override single fields. The resolved
config is written verbatim into the run record, so two records with equal configs are comparable.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks import DataSpec


class ConfigError(ValueError):
    """A bad user-supplied setting; the CLI prints it as one paragraph and exits 2."""


@dataclass(frozen=True)
class BackboneSpec:
    """The tiny LLaVA (CLIP vision tower + Llama decoder) built from configs, or a local checkpoint."""

    model_path: str | None = None  # a local llava-hf checkpoint; None builds the tiny model
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    image_size: int = 64
    patch_size: int = 8
    text_hidden: int = 128
    text_intermediate: int = 344
    text_layers: int = 4
    text_heads: int = 4
    vocab_size: int = 2048
    max_positions: int = 256

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Stage0Spec:
    """Stage 0: dense caption-style pretraining of the tiny backbone (not one of the eight tasks).

    2400 steps since coin-mini v4: after 1200 the base model named the right numeral in 24% of its
    numeral captions and TextVQA stayed at its constant baseline after training. 4000 since numeral
    captions tripled their weight in the mix and focused captions took 15% of it: the other image
    caption kinds then get 4000 x 0.63 x 0.73 / 1.21 = 1520 steps, about the 2400 x 0.78 x 0.73 / 0.89
    = 1535 they had when their shares were measured. The base ships with the package and is built
    once per machine otherwise, so its length costs no run any time."""

    steps: int = 4000  # 900 before coin-mini v3; 1200 in v3; 2400 in v4 (see the docstring)
    batch_size: int = 16
    lr: float = 1e-3  # 2e-3 plateaus at caption loss 0.78, 1e-3 reaches 0.49 in the same 900 steps
    warmup_ratio: float = 0.05
    num_records: int = 8000
    data_seed: int = 1234


@dataclass
class RunConfig:
    method: str = "seq-ft"
    tasks: str = "coin"
    preset: str = "tiny"
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    stage0: Stage0Spec = field(default_factory=Stage0Spec)
    # budget
    steps_per_task: int = 150
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3  # kaiming-initialised LoRA on the tiny decoder; 3e-3 collapses to constant answers
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    train_projector: bool = False
    compile: bool = False  # torch.compile the model for training (--compile; bench.train.trainer.train_steps)
    gradient_checkpointing: bool = False  # recompute decoder activations in backward (--gradient-checkpointing)
    # evaluation
    # 256: a coin-mini test split (200) decodes as one batch, 4x fewer decode loops than 64; predictions
    # identical to batch 64 on all 1600 test records (python -m bench perf eval --compare-batch 256)
    eval_batch_size: int = 256
    max_new_tokens: int = 24
    scoring_mode: str = "official"
    # seeds
    seed: int = 0
    data_seed: int = 0
    task_order_seed: int | None = None
    # data
    data_root: str | None = None
    instructions: str = "Original"
    limit_train: int | None = None
    limit_test: int | None = None
    mini_train: int = 2000
    mini_test: int = 200
    # the validation protocol (bench tune): every task's test split replaced by a held-out part of its
    # training split (tasks.validation); the test split is never loaded
    validation: bool = False
    # method hyper-parameters (--set key=value), validated against the method's dataclass
    method_set: dict[str, str] = field(default_factory=dict)
    # lm-eval tasks evaluated after row 0 and after every task (--track lmeval:TASK; bench/lmeval/track.py)
    track: list[str] = field(default_factory=list)
    lmeval_include: list[str] = field(default_factory=list)  # extra lm-eval task folders (--lmeval-include)
    track_limit: int | None = None  # first N documents of each tracked task (--track-limit); None = all
    # where things go
    out: str = "results"
    cache_dir: str = field(default_factory=lambda: default_cache_dir())

    def validate(self) -> None:
        positive = {"steps_per_task": self.steps_per_task, "batch_size": self.batch_size,
                    "grad_accum": self.grad_accum, "eval_batch_size": self.eval_batch_size,
                    "max_new_tokens": self.max_new_tokens, "mini_train": self.mini_train, "mini_test": self.mini_test}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}.")
        for name in ("limit_train", "limit_test", "track_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}.")
        if not (0 < self.lr < 1):
            raise ConfigError(f"--lr must be in (0, 1), got {self.lr}.")
        if not (0 <= self.warmup_ratio < 1):
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ConfigError(f"--mixed-precision must be one of auto, no, bf16, fp16; got {self.mixed_precision!r}.")
        if self.scoring_mode not in ("official", "clean"):
            raise ConfigError(f"--scoring-mode must be official or clean, got {self.scoring_mode!r}.")
        if self.instructions not in ("Original", "Diverse", "10Type"):
            raise ConfigError(f"--instructions must be Original, Diverse or 10Type, got {self.instructions!r}.")
        if self.data_root is not None and not Path(self.data_root).is_dir():
            raise ConfigError(f"--data-root {self.data_root!r} is not a directory. Give the folder that holds "
                              "Instructions_<Variant>/ and cl_dataset/ (the CoIN layout), or omit it to use coin-mini.")
        for item in self.track:
            if not item.startswith("lmeval:") or not item[len("lmeval:"):]:
                raise ConfigError(f"--track expects lmeval:TASK (an lm-eval task or group name), got {item!r}.")
        for folder in self.lmeval_include:
            if not Path(folder).is_dir():
                raise ConfigError(f"--lmeval-include {folder!r} is not a directory of lm-eval task configs.")
        if self.backbone.model_path is not None and not Path(self.backbone.model_path).is_dir():
            raise ConfigError(f"--model {self.backbone.model_path!r} is not a directory holding a local llava-hf "
                              "checkpoint (config.json, weights, processor files). Nothing is downloaded here.")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("cache_dir")  # machine-local, not part of what a run means
        d.pop("out")
        if not d["validation"]:  # a test-protocol run's config (and so its record key) as it always was
            d.pop("validation")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], **machine: Any) -> "RunConfig":
        """Inverse of ``to_dict`` (a run's config.json, bench/io/checkpoint.py); ``machine`` gives the
        machine-local fields ``to_dict`` leaves out (``out``, ``cache_dir``). Unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"saved run config has unknown settings {', '.join(unknown)}; "
                              "it was written by a different version of continual-moe-bench.")
        values = dict(d)
        values["backbone"] = BackboneSpec(**values.get("backbone", {}))
        values["stage0"] = Stage0Spec(**values.get("stage0", {}))
        values.update({k: v for k, v in machine.items() if v is not None})
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def data_spec(self):
        return DataSpec(data_root=self.data_root, instructions=self.instructions, limit_train=self.limit_train,
                        limit_test=self.limit_test, data_seed=self.data_seed, mini_train=self.mini_train,
                        mini_test=self.mini_test, image_size=self.backbone.image_size, validation=self.validation,
                        cache_dir=str(Path(self.cache_dir) / "coin-mini"))


def default_cache_dir() -> str:
    return os.environ.get("CMB_CACHE", str(Path.home() / ".cache" / "continual-moe-bench"))


def stable_hash(obj: Any, length: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


# Presets: the backbone plus the default budget for it. "tiny" is the CPU default (coin-mini, 2 cores);
# "smoke" is the CI regression preset; "llava-1.5-7b" is the GPU path with a local checkpoint.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    # smoke: `python -m bench check` runs it for every method; mini_test=50 makes one answer 2 points (its tolerance)
    "smoke": {"steps_per_task": 20, "mini_train": 200, "mini_test": 50, "stage0": Stage0Spec(steps=150, num_records=1500)},
    "llava-1.5-7b": {"steps_per_task": 1000, "batch_size": 16, "lr": 2e-4, "mixed_precision": "bf16",
                     "eval_batch_size": 32, "max_new_tokens": 64},
}


def build_config(preset: str = "tiny", **overrides: Any) -> RunConfig:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}.")
    values: dict[str, Any] = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    model_path = values.pop("model", None)
    cfg = RunConfig(preset=preset, **values)
    if model_path is not None:
        cfg.backbone = dataclasses.replace(cfg.backbone, model_path=str(model_path))
    elif preset == "llava-1.5-7b":
        raise ConfigError("preset llava-1.5-7b needs --model PATH pointing at a local llava-hf checkpoint.")
    cfg.validate()
    return cfg


# The `run` flags a sweep shares (everything but --method, --seed, --set and the lm-eval tracking
# flags, which are per run); `python -m bench run` and `sweep` register these same definitions.
BUDGET_FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--tasks", {"default": "coin", "help": "a suite name or comma-separated task names"}),
    ("--preset", {"default": "tiny"}),
    ("--steps-per-task", {"type": int}),
    ("--batch-size", {"type": int}),
    ("--grad-accum", {"type": int}),
    ("--lr", {"type": float}),
    ("--data-seed", {"type": int}),
    ("--task-order-seed", {"type": int}),
    ("--data-root", {}),
    ("--instructions", {"choices": ["Original", "Diverse", "10Type"]}),
    ("--limit-train", {"type": int}),
    ("--limit-test", {"type": int}),
    ("--model", {"help": "a local llava-hf checkpoint folder (default: the tiny preset backbone)"}),
    ("--mixed-precision", {"choices": ["auto", "no", "bf16", "fp16"]}),
    ("--train-projector", {"action": "store_true", "default": None,
                           "help": "also train the vision-language projector in every task (CoIN's LoRA recipe option)"}),
    ("--compile", {"action": "store_true", "default": None,
                   "help": "train through torch.compile (off by default; meant for GPUs, needs a C++ compiler on CPU)"}),
    ("--gradient-checkpointing", {"action": "store_true", "default": None,
                                  "help": "recompute decoder activations in the backward pass (less memory, ~30%% more compute)"}),
    ("--out", {"default": "results", "help": "results folder (records go to OUT/runs/)"}),
)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The budget flags as ``build_config`` keyword arguments (None = the preset's value)."""
    return {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
            for flag, _ in BUDGET_FLAGS if flag != "--preset"}
