"""Learnability: does a method learn each task above chance right after training on it?

A continual method's accuracy matrix ``A`` has row 0 for the base model and row ``t + 1`` after training on
task ``t``; its diagonal ``A[t + 1][t]`` is what the method learned on task ``t`` before any later task could
make it forget. A diagonal cell at or below the task's chance level plus ``LEARNABILITY_MARGIN`` points means
the method did not learn that task at all, which no forgetting metric shows (nothing learned, nothing lost).

Chance is the accuracy of the constant majority-answer predictor (:mod:`tasks.chance`): a record's
``tasks_chance`` (``{task: %}``) where it has one, else computed from its coin-mini data spec (data seed,
split sizes and limits, image size, scoring mode). A coin-mini record made by another generator version than
this code's has no known chance (its data are not the data this code renders); a record of real CoIN files
without ``tasks_chance`` has none either.

Joint training has no per-task stream and so no diagonal: its accuracies after the stream (the Last row)
are judged instead. Everything here is a pure function of the records (plus the coin-mini generators).

The gate judges *default configurations*: leaderboard rows whose records were run without ``--set``
(``config.method_set`` empty; the leaderboard labels rows from the records alone). Those are the method's
defaults of the time the records were made: when a method's defaults change, its committed records are
still the results the method is shown with until they are regenerated, so they stay gated. Rows run with
``--set`` (deliberate ablations) are exempt.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

from tasks.base import DataSpec
from tasks.synthetic import GENERATOR_VERSION
from bench.config import default_cache_dir
from tasks.chance import chance_levels
import methods

LEARNABILITY_MARGIN = 5.0  # accuracy points above chance a cell must exceed to count as learned
MARK = "✗"  # marks a cell at or below chance + margin


@dataclasses.dataclass(frozen=True)
class Chance:
    """A record's chance levels, or why it has none (``stale``: made on other coin-mini data)."""

    levels: dict[str, float] | None
    reason: str | None = None
    stale: bool = False


def _image_size(r: dict[str, Any]) -> int:
    for split in (r["data"].get("splits") or {}).values():
        for source in (split or {}).values():
            if isinstance(source, dict) and source.get("image_size") is not None:
                return int(source["image_size"])
    for where in ((r.get("config") or {}).get("backbone") or {}, (r.get("backbone") or {}).get("spec") or {}):
        if where.get("image_size") is not None:
            return int(where["image_size"])
    return DataSpec.image_size


def record_chance(r: dict[str, Any]) -> Chance:
    """Chance level (%) per task of ``r``'s test data: its ``tasks_chance`` if present, else computed."""
    if r.get("tasks_chance") is not None:
        given = r["tasks_chance"]
        if not isinstance(given, dict):
            return Chance(None, f"'tasks_chance' is a {type(given).__name__}, not {{task: percent}}")
        return Chance({str(k): float(v) for k, v in given.items() if v is not None})
    data = r["data"]
    if data["source"] != "coin-mini":
        return Chance(None, f"records of data source {data['source']!r} carry no 'tasks_chance'")
    versions = sorted({str(s["generator_version"]) for split in (data.get("splits") or {}).values()
                       for s in (split or {}).values() if isinstance(s, dict) and "generator_version" in s})
    if versions and versions != [GENERATOR_VERSION]:
        return Chance(None, f"made on coin-mini generator v{', v'.join(versions)}, this code generates "
                            f"v{GENERATOR_VERSION}; regenerate the records", stale=True)
    defaults = DataSpec()
    spec = DataSpec(data_seed=int(data.get("data_seed", r["seeds"].get("data", 0)) or 0),
                    mini_train=int(data.get("mini_train") or defaults.mini_train),
                    mini_test=int(data.get("mini_test") or defaults.mini_test),
                    limit_train=data.get("limit_train"), limit_test=data.get("limit_test"),
                    image_size=_image_size(r), cache_dir=str(Path(default_cache_dir()) / "coin-mini"))
    return Chance(chance_levels(spec, tuple(r["tasks"]), r.get("scoring_mode") or "official"))


def stream_accuracies(r: dict[str, Any]) -> dict[str, float]:
    """``{task: accuracy}`` the gate judges: the diagonal (right after training on each task) for a per-task
    stream, the Last row for joint training."""
    A, names = r["accuracy_matrix"], r["tasks"]
    if r["joint_training"]:
        return {t: float(v) for t, v in zip(names, A[-1])}
    return {t: float(A[i + 1][i]) for i, t in enumerate(names) if i + 1 < len(A)}


def flagged_cells(r: dict[str, Any], chance: dict[str, float] | None = None) -> list[tuple[int, int]]:
    """The (row, column) cells of ``r``'s accuracy matrix that the gate judges (diagonal; joint training:
    the last row) and that are at or below chance + margin, for this one record (``chance``: its levels,
    looked up when not given). Empty when its chance is unknown."""
    chance = record_chance(r).levels if chance is None else chance
    if not chance:
        return []
    A, names = r["accuracy_matrix"], r["tasks"]
    cells = ([(len(A) - 1, j) for j in range(len(names))] if r["joint_training"]
             else [(j + 1, j) for j in range(len(names)) if j + 1 < len(A)])
    return [(i, j) for i, j in cells if names[j] in chance and at_or_below(float(A[i][j]), chance[names[j]])]


def at_or_below(value: float, chance: float, margin: float = LEARNABILITY_MARGIN) -> bool:
    """Whether ``value`` is at or below ``chance + margin`` (rounded to 1e-6, so float noise in a mean over
    seeds cannot decide a tie)."""
    return round(value, 6) <= round(chance + margin, 6)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@dataclasses.dataclass
class RowLearnability:
    """One configuration (a leaderboard row): mean over its records of the judged accuracies and of chance."""

    label: str
    method: str
    joint: bool
    values: dict[str, float]                 # task -> mean accuracy over the records
    chance: dict[str, float | None]          # task -> mean chance over the records (None: unknown)
    reason: str | None = None                # why chance is unknown for the whole row
    stale: bool = False

    def judged(self) -> list[str]:
        return [t for t in self.values if self.chance.get(t) is not None]

    def failing(self) -> list[str]:
        return [t for t in self.judged() if at_or_below(self.values[t], self.chance[t])]

    def learned(self) -> int:
        return len(self.judged()) - len(self.failing())


def row_learnability(row) -> RowLearnability:
    """``row``: a :class:`bench.analysis.leaderboard.Row` (label, method, records)."""
    records = row.records
    joint = bool(records[0]["joint_training"])
    per_record = [stream_accuracies(r) for r in records]
    tasks = list(dict.fromkeys(t for acc in per_record for t in acc))
    values = {t: _mean([acc[t] for acc in per_record if t in acc]) for t in tasks}
    chances = [record_chance(r) for r in records]
    missing = next((c for c in chances if c.levels is None), None)
    if missing is not None:
        return RowLearnability(row.label, row.method, joint, values, {t: None for t in tasks}, missing.reason,
                               missing.stale)
    chance: dict[str, float | None] = {}
    for t in tasks:
        levels = [c.levels[t] for c in chances if t in c.levels]
        chance[t] = _mean(levels) if len(levels) == len(chances) else None
    return RowLearnability(row.label, row.method, joint, values, chance)


@dataclasses.dataclass
class GateResult:
    problems: list[str]
    judged: int                              # configurations judged
    notes: list[str]                         # configurations not judged, and why


def gate(groups: Iterable[tuple[tuple, list]], method_names: Iterable[str] | None = None) -> GateResult:
    """Every default configuration (records run without ``--set``; oracle rows included) of a registered
    method in ``method_names`` (default: every registered method) must be above chance + margin on every
    task right after training on it (joint training: after the stream). ``groups`` is
    :func:`bench.analysis.leaderboard.build_groups`' output."""
    registered = set(methods.names())
    wanted = registered if method_names is None else registered & set(method_names)
    groups = list(groups)
    problems, notes, judged = [], [], 0
    seen: set[str] = set()
    for i, (_gkey, rows) in enumerate(groups, 1):
        where = f" (group {i})" if len(groups) > 1 else ""
        for row in rows:
            if row.method not in wanted or row.changed:
                continue
            seen.add(row.method)
            label = row.label
            info = row_learnability(row)
            if info.reason is not None:
                if info.stale:
                    problems.append(f"{label}{where}: chance level unknown: {info.reason}")
                else:
                    notes.append(f"{label}{where} not judged: {info.reason}")
                continue
            judged += 1
            unknown = [t for t in info.values if info.chance.get(t) is None]
            if unknown:
                notes.append(f"{label}{where}: no chance level for {', '.join(unknown)}")
            bad = info.failing()
            if bad:
                when = "after joint training" if info.joint else "right after training"
                cells = ", ".join(f"{t} {info.values[t]:.1f} (chance {info.chance[t]:.1f})" for t in bad)
                problems.append(f"{label}{where}: {len(bad)} of {len(info.judged())} task(s) at or below "
                                f"chance + {LEARNABILITY_MARGIN:g} {when}: {cells}")
    if wanted - seen:
        notes.append(f"no record of the default configuration of {', '.join(sorted(wanted - seen))}")
    return GateResult(problems, judged, notes)
