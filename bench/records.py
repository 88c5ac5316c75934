"""The run record: one JSON file per run (design.md "The run record"), written atomically, never
overwritten; plus the small helpers that make every file write safe."""
from __future__ import annotations

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
        root = Path(__file__).resolve().parent.parent
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
