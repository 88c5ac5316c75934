"""The run record: one JSON file per run, written atomically, never
overwritten; plus the small helpers that make every file write safe."""
from __future__ import annotations

import base64
import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.config import RunConfig

RECORD_VERSION = 1
REQUIRED_KEYS = ("record_version", "run_id", "method", "hparams", "tasks", "data", "backbone", "seeds", "budget",
                 "accuracy_matrix", "scores", "metrics", "parameters", "wall_time", "versions", "git_commit",
                 "scoring_mode", "oracle_task_id", "joint_training", "config")
PACKAGES = ("torch", "transformers", "accelerate", "datasets", "tokenizers", "lm_eval", "pandas", "pillow")


class RecordError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------
# Per-sample scores: ``scores[row][task]["per_sample"]``
# --------------------------------------------------------------------------------------------------
# One string per task and matrix row: ``"u240:" + base64(bytes)``, one byte per test record in the
# test split's record order. Byte b <= 240 is the record's score b / 240 in [0, 1] (exact tasks give
# 0 or 240; VQA soft scores are multiples of 1/30 and 240 = 8 * 30, so they are stored exactly); byte
# 255 marks a record outside the task's denominator (GQA's unbalanced questions). The entry's
# ``accuracy`` is 100 * the mean of the decoded scores of the counted records. The field is optional:
# records written before it existed lack it, and their intervals are unknown.
PER_SAMPLE_PREFIX = "u240:"
PER_SAMPLE_SCALE = 240
NOT_COUNTED = 255


def encode_scores(scores, counted=None) -> str:
    """Pack per-record scores in [0, 1] (``counted[i]`` False: outside the denominator) as above."""
    if counted is not None and len(counted) != len(scores):
        raise ValueError(f"{len(counted)} counted flags for {len(scores)} scores")
    out = bytearray()
    for i, value in enumerate(scores):
        if counted is not None and not counted[i]:
            out.append(NOT_COUNTED)
            continue
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"per-sample score {i} is {value}, outside [0, 1]")
        out.append(int(round(value * PER_SAMPLE_SCALE)))
    return PER_SAMPLE_PREFIX + base64.b64encode(bytes(out)).decode("ascii")


def decode_scores(text: str) -> list[float | None]:
    """The inverse of :func:`encode_scores`: one score per test record, None where not counted."""
    if not isinstance(text, str) or not text.startswith(PER_SAMPLE_PREFIX):
        raise RecordError(f"per-sample scores must be a string starting {PER_SAMPLE_PREFIX!r}")
    try:
        raw = base64.b64decode(text[len(PER_SAMPLE_PREFIX):], validate=True)
    except ValueError:
        raise RecordError("per-sample scores are not valid base64") from None
    out: list[float | None] = []
    for b in raw:
        if b == NOT_COUNTED:
            out.append(None)
        elif b <= PER_SAMPLE_SCALE:
            out.append(b / PER_SAMPLE_SCALE)
        else:
            raise RecordError(f"per-sample byte {b} is neither a score (0..{PER_SAMPLE_SCALE}) nor {NOT_COUNTED}")
    return out


def per_sample_accuracy(text: str) -> float:
    """100 * the mean score of the counted records of one encoded entry (0 when none is counted)."""
    values = [v for v in decode_scores(text) if v is not None]
    return 100.0 * sum(values) / len(values) if values else 0.0


def atomic_write_text(path: Path, text: str, *, overwrite: bool = True) -> None:
    """Write via a temp file in the same folder + rename, so a reader never sees half a file. With
    ``overwrite=False`` an existing file is an error (link() fails atomically instead of replacing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise RecordError(f"{path} already exists; run records are never overwritten") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if res.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return res.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def new_run_id(method: str, seed: int) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{method}-s{seed}"


def accuracy_matrix(rows: list[dict[str, dict[str, Any]]], tasks: list[str]) -> list[list[float]]:
    """``A[i][j]``: accuracy (points, 4 decimals) on task ``j`` after matrix row ``i`` (row 0: the base)."""
    return [[round(row[n]["accuracy"], 4) for n in tasks] for row in rows]


def build_record(*, run_id: str, resumed_after_task: int | None, method: str, hparams: dict[str, Any],
                 joint_training: bool, oracle_task_id: bool, tasks: list[str], cfg: RunConfig,
                 data_source: str, splits: dict[str, Any], backbone: dict[str, Any], processes: int,
                 mixed_precision: str, sharding: Any, matrix_rows: list[str],
                 rows: list[dict[str, dict[str, Any]]], metrics: dict[str, Any], parameters: list,
                 method_reports: list, training: list, wall_time: dict[str, float],
                 peak_rss_mb: float) -> dict[str, Any]:
    """The run record of a finished run, in the one schema ``validate`` checks. ``rows`` are the
    evaluation rows (row 0 first): each task's scores plus each tracked name's (``cfg.track``);
    ``backbone`` is the backbone's description with its ``stage0`` entry."""
    coin_mini = data_source == "coin-mini"
    return {
        "record_version": RECORD_VERSION,
        "run_id": run_id,
        "run_dir": f"runs/{run_id}",  # per-task checkpoints (bench.io.checkpoint); git-ignored
        "resumed_after_task": resumed_after_task,
        "method": method,
        "hparams": hparams,
        "joint_training": joint_training,
        "oracle_task_id": oracle_task_id,
        "tasks": tasks,
        "suite": cfg.tasks,
        "data": {"source": data_source, "data_seed": cfg.data_seed, "instructions": cfg.instructions,
                 "mini_train": cfg.mini_train if coin_mini else None,
                 "mini_test": cfg.mini_test if coin_mini else None,
                 "limit_train": cfg.limit_train, "limit_test": cfg.limit_test, "splits": splits},
        "backbone": backbone,
        "seeds": {"run": cfg.seed, "data": cfg.data_seed, "task_order": cfg.task_order_seed},
        "budget": {"steps_per_task": cfg.steps_per_task, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
                   "lr": cfg.lr, "warmup_ratio": cfg.warmup_ratio, "preset": cfg.preset,
                   "processes": processes, "mixed_precision": mixed_precision, "sharding": sharding},
        "scoring_mode": cfg.scoring_mode,
        "accuracy_matrix": accuracy_matrix(rows, tasks),
        "matrix_rows": matrix_rows,
        "scores": [{n: row[n] for n in tasks} for row in rows],
        "tracked": {k: [row[k] for row in rows] for k in cfg.track},  # one entry per matrix row
        "metrics": metrics,
        "parameters": parameters,
        "method_reports": method_reports,
        "training": training,
        "wall_time": {k: round(v, 3) for k, v in wall_time.items()},
        "peak_rss_mb": round(peak_rss_mb, 1),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "config": cfg.to_dict(),
    }


def validate(record: dict[str, Any]) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise RecordError(f"run record {record.get('run_id')!r} lacks {', '.join(missing)}")
    A = record["accuracy_matrix"]
    T = len(record["tasks"])
    if any(len(row) != T for row in A):
        raise RecordError(f"run record {record['run_id']!r}: every accuracy-matrix row must have {T} columns")
    expected_rows = 2 if record["joint_training"] else T + 1
    if len(A) != expected_rows:
        raise RecordError(f"run record {record['run_id']!r}: {len(A)} matrix rows, expected {expected_rows}")
    for r, row in enumerate(record["scores"]):
        for task, entry in row.items():
            if isinstance(entry, dict) and "per_sample" in entry:
                counted = [v for v in decode_scores(entry["per_sample"]) if v is not None]
                if "n" in entry and len(counted) != entry["n"]:
                    raise RecordError(f"run record {record['run_id']!r}: row {r} {task} has {len(counted)} counted "
                                      f"per-sample scores for n = {entry['n']}")


def write_record(record: dict[str, Any], out_dir: Path) -> Path:
    validate(record)
    path = Path(out_dir) / "runs" / f"{record['run_id']}.json"
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n", overwrite=False)
    return path


def read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise RecordError(f"{path} is not valid JSON ({e})") from None
    validate(record)
    return record
