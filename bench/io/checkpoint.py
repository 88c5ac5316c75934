"""Run directories and per-task checkpoints: what a killed run needs to resume after its last
finished task, written so that no reader ever sees half a file.

Layout of one run (``run_id`` is fixed when the run starts; the record keeps its usual place)::

    <out>/runs/<run_id>.json            the run record (written once, at the end, never overwritten)
    <out>/runs/<run_id>/config.json     the resolved RunConfig (``RunConfig.to_dict``)
    <out>/runs/<run_id>/task-<k:02d>/   after stage k (0-based) finished training AND evaluation:
        method.safetensors              ``methods.state.checkpoint_state`` tensors: what the method owns or
                                        trained; the stage-0 base model is referenced, never copied
        state.json                      method metadata, RNG states (before and after the stage's
                                        evaluation), the record pieces so far (matrix rows, parameter
                                        counts, reports, training logs, wall time), the base model's key
                                        and the sha256 of method.safetensors

Every file is written to a temp name and renamed; a task folder is assembled under a temp name and
renamed into place, so a ``task-XX`` folder is either complete or absent. Nothing is unpickled:
tensors are safetensors, metadata is JSON. A truncated, corrupted or mismatched checkpoint raises
``CheckpointError`` (a ``RecordError``: the CLI prints one paragraph and exits 2).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save
from safetensors import SafetensorError

from bench.config import ConfigError, RunConfig
from bench.io.records import RecordError, atomic_write_text
from methods.state import StateError
from methods import state as method_state

FORMAT = 1
TENSORS, STATE, CONFIG = "method.safetensors", "state.json", "config.json"
_TASK_DIR = re.compile(r"^task-(\d{2,})$")


class CheckpointError(RecordError):
    """A missing, truncated, corrupted or mismatched checkpoint."""


# --------------------------------------------------------------------------------------------------
# paths
# --------------------------------------------------------------------------------------------------
def run_dir_for(out: str | Path, run_id: str) -> Path:
    return Path(out) / "runs" / run_id


def task_dir(run_dir: str | Path, k: int) -> Path:
    return Path(run_dir) / f"task-{k:02d}"


def finished_tasks(run_dir: str | Path) -> list[int]:
    """Stage indices with a complete checkpoint folder, ascending."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = (_TASK_DIR.match(p.name) for p in run_dir.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


# --------------------------------------------------------------------------------------------------
# the run's config
# --------------------------------------------------------------------------------------------------
def write_run_config(run_dir: str | Path, cfg: RunConfig) -> Path:
    path = Path(run_dir) / CONFIG
    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=1, sort_keys=True) + "\n")
    return path


def read_run_config(run_dir: str | Path, cache_dir: str | None = None) -> RunConfig:
    """The RunConfig a run was started with; ``out`` is the folder holding ``runs/<run_id>/``."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory: it has no {CONFIG}. Give the folder "
                              "<out>/runs/<run_id>/ that a run created after its first task.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the run directory is damaged.") from None
    return RunConfig.from_dict(data, out=str(run_dir.parent.parent), cache_dir=cache_dir)


def resume_config(run_dir: str | Path, given: dict[str, Any]) -> RunConfig:
    """The config to resume ``run_dir`` with: its config.json. ``given`` holds the settings the user
    passed explicitly (RunConfig field name -> value); one that differs from the run's is an error,
    since a resumed run must be the run that was started."""
    cfg = read_run_config(run_dir)
    saved = cfg.to_dict()
    saved["model"] = cfg.backbone.model_path
    saved["out"] = str(Path(run_dir).resolve().parent.parent)
    conflicts = []
    for key, value in given.items():
        have = saved.get(key, "<not a setting of this run>")
        if key == "out":
            value = str(Path(value).resolve())
        if isinstance(have, (list, tuple)) and isinstance(value, (list, tuple)):
            have, value = list(have), list(value)
        if have != value:
            conflicts.append(f"--{key.replace('_', '-')}={value!r} (the run has {have!r})")
    if conflicts:
        raise ConfigError(f"--resume {run_dir} continues the run with the settings in its config.json; these "
                          f"flags conflict with them: {'; '.join(conflicts)}. Drop them, or start a new run.")
    return cfg


# --------------------------------------------------------------------------------------------------
# one task's checkpoint
# --------------------------------------------------------------------------------------------------
@dataclass
class TaskCheckpoint:
    """What ``load_task_checkpoint`` returns: the tensors and the parsed state.json."""

    index: int
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]

    @property
    def method_meta(self) -> dict[str, Any]:
        return self.state["method"]


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_task_checkpoint(run_dir: str | Path, k: int, method, progress: dict[str, Any], *,
                         base: dict[str, Any], rng: dict[str, Any],
                         rng_before_eval: dict[str, Any] | None = None) -> Path:
    """Write ``run_dir/task-<k:02d>/`` (the method's tensors + state) atomically; returns the folder.

    ``progress`` holds the record pieces so far (JSON-able); ``base`` identifies the stage-0 model the
    tensors apply to (its key / config hash); ``rng`` is the generator state to continue from and
    ``rng_before_eval`` the state the stage's evaluation started from (to reproduce that row)."""
    run_dir = Path(run_dir)
    final = task_dir(run_dir, k)
    if final.exists():
        raise CheckpointError(f"{final} already exists; a task checkpoint is never overwritten")
    tensors, meta = method_state.checkpoint_state(method)
    blob = save(tensors, metadata={"format": str(FORMAT), "method": method.name, "task": str(k)})
    state = {"format": FORMAT, "run_id": run_dir.name, "task_index": k, "base": base, "method": meta,
             "rng": rng, "rng_before_eval": rng_before_eval or rng, "progress": progress,
             "tensors_sha256": hashlib.sha256(blob).hexdigest(), "tensors_bytes": len(blob)}
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        _fsync_write(tmp / TENSORS, blob)
        _fsync_write(tmp / STATE, (json.dumps(state, sort_keys=True) + "\n").encode())
        os.replace(tmp, final)  # the folder appears complete or not at all
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_task_checkpoint(run_dir: str | Path, k: int) -> TaskCheckpoint:
    """Read and verify ``task-<k:02d>`` (sha256 of the tensors, format, task index); no pickle."""
    folder = task_dir(run_dir, k)
    if not folder.is_dir():
        have = finished_tasks(run_dir)
        raise CheckpointError(f"no checkpoint after task {k} in {run_dir} (finished tasks: "
                              f"{', '.join(map(str, have)) or 'none'}).")
    state_path, tensor_path = folder / STATE, folder / TENSORS
    try:
        state = json.loads(state_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} lacks {STATE}; the checkpoint is incomplete.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{state_path} is corrupted ({e}); delete {folder} to resume from the task before.") from None
    if state.get("format") != FORMAT or state.get("task_index") != k:
        raise CheckpointError(f"{state_path} has format {state.get('format')!r} / task {state.get('task_index')!r}; "
                              f"expected format {FORMAT}, task {k}.")
    try:
        blob = tensor_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{folder} lacks {TENSORS}; the checkpoint is incomplete.") from None
    if len(blob) != state.get("tensors_bytes") or hashlib.sha256(blob).hexdigest() != state.get("tensors_sha256"):
        raise CheckpointError(f"{tensor_path} is truncated or corrupted ({len(blob)} bytes, expected "
                              f"{state.get('tensors_bytes')}; checksum mismatch). Delete {folder} to resume from "
                              "the task before.")
    try:
        tensors = load(blob)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{tensor_path} cannot be read as safetensors ({e}).") from None
    return TaskCheckpoint(index=k, tensors=tensors, state=state)


def restore_method(method, ckpt: TaskCheckpoint) -> None:
    """``methods.state.restore`` with its errors turned into CheckpointError (one paragraph for the CLI)."""
    try:
        method_state.restore(method, ckpt.tensors, ckpt.method_meta)
    except StateError as e:
        raise CheckpointError(f"checkpoint after task {ckpt.index} does not fit: {e}") from None


def check_base(ckpt: TaskCheckpoint, base: dict[str, Any]) -> None:
    """The checkpoint's tensors only make sense on the base model they were trained from."""
    saved = ckpt.state.get("base", {})
    if saved != base:
        raise CheckpointError(f"the checkpoint after task {ckpt.index} was made on base model {saved}, "
                              f"but the config now gives {base}; the stage-0 cache or backbone changed.")


def base_identity(backbone, stage0: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint records about the (referenced, not copied) stage-0 base model: its key and the
    sha256 of its weights file, whether it came from the cache, the package or training (weights
    trained on another machine under the same key are another base)."""
    return {"config_hash": backbone.config_hash, "stage0_key": stage0.get("key"), "stage0_sha256": stage0.get("sha256"),
            "source": "checkpoint" if stage0.get("source") == "checkpoint" else "stage0"}


# --------------------------------------------------------------------------------------------------
# the record or interrupted run of a config (what a sweep skips or resumes)
# --------------------------------------------------------------------------------------------------
def config_key(config: dict[str, Any]) -> str:
    """A canonical text form of a resolved config dict (JSON types, sorted keys), for equality."""
    return json.dumps(json.loads(json.dumps(config, default=str)), sort_keys=True)


def recorded_key(config: dict[str, Any]) -> str:
    """``config_key`` of a config read from a record or run directory. A top-level field the record
    lacks (added to RunConfig after it was written) counts as that field's default, so a new knob at its
    default does not make every old record a different config."""
    return config_key({**RunConfig().to_dict(), **config})


def existing_records(runs_dir: Path) -> dict[str, Path]:
    """config key → record path for every readable record directly under ``runs_dir``. Files that are
    not JSON objects with a ``config`` are ignored here (the leaderboard reports them)."""
    found: dict[str, Path] = {}
    for path in sorted(Path(runs_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and isinstance(record.get("config"), dict):
            found.setdefault(recorded_key(record["config"]), path)
    return found


def resumable_runs(runs_dir: Path) -> dict[str, Path]:
    """config key → run directory for every interrupted run under ``runs_dir``: a ``<run_id>/`` with a
    ``config.json`` and at least one finished task but no ``<run_id>.json`` record (newest id wins)."""
    found: dict[str, Path] = {}
    for config in sorted(Path(runs_dir).glob(f"*/{CONFIG}")):
        run_dir = config.parent
        if (run_dir.parent / f"{run_dir.name}.json").exists() or not finished_tasks(run_dir):
            continue
        try:
            found[recorded_key(json.loads(config.read_text()))] = run_dir
        except (OSError, json.JSONDecodeError):
            continue
    return found
