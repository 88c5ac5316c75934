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
