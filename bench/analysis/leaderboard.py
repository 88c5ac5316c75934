"""Leaderboard: ``results/runs/*.json`` → ``results/LEADERBOARD.md``, ``results/leaderboard.csv`` and
small PNGs under ``results/plots/``.

Records are only comparable when they share a task suite, a data source, a backbone (config hash),
a budget (steps per task, batch size, lr), a task order (``tasks``; whether it was shuffled,
``seeds.task_order`` not None) and a data seed (``seeds.data``), so there is one table per such group. The
heading names the order always and the data seed when it is not 0; the default groups (suite order, data
seed 0) come first, in the order they always had, and their plot names carry no order or seed, so adding a
shuffled or re-seeded run renames nothing. Within a group a
row is one *configuration*: a method with one set of hyper-parameters and one oracle flag; its seeds
are aggregated as ``mean ± std`` (sample std, ddof=1; 0.00 for a single seed) with ``n`` the number of
records. Rows run with ``--set`` hyper-parameters (the record's ``config.method_set``) are ablations and
name those keys in their label (``cmoe [probing=False]``); oracle-task-id runs (an upper bound the design
keeps apart) carry ``(oracle)`` and are marked in the *Kind* column, as are joint-training runs.

Parameter columns (from the record's ``parameters`` list, one entry per stage, first seed's record):

* **Params total**: ``parameters[-1].total``, everything the model holds after the stream.
* **Params added**: ``parameters[-1].total - (parameters[0].total - parameters[0].trained)``, i.e. the
  total after the stream minus what was frozen during the first stage (≈ the stage-0 backbone). It counts
  the method's own first-stage parameters (adapters, experts, routers) plus all growth afterwards.
* **Trained/task**: the mean over the tasks after the first of ``parameters[k].trained`` (what stage ``k``
  trained; for a growing method, what a new task can train); – with a single stage (joint training).
* **Activated/token**: ``parameters[-1].activated_per_token``.

Per group, after the main table (see :mod:`bench.analysis.learnability`):

* **Right after training (diagonal) vs chance**: per configuration the mean over seeds of ``A[t+1][t]``,
  cells at or below chance + ``LEARNABILITY_MARGIN`` marked ``✗``, and how many tasks are above it; joint
  training has no diagonal and shows its Last row. The heatmaps hatch the same cells of their seed.
* **Task locator (PTL) accuracy after the last task**, for records whose last-row scores carry the method's
  ``ptl_accuracy`` / ``ptl_predicted`` (LLaVA-CMoE): per task the mean over seeds, and a confusion-matrix
  plot per configuration (``ptl_predicted`` counts summed over seeds, row-normalised).
* **Growth per task**, for configurations whose method reports (``method_reports``, one per task) carry
  ``added_parameters_if_every_layer_expanded`` (LLaVA-CMoE): per task after the first the mean over seeds
  of the layers expanded (``len(expanded_layers)``, of ``len(experts_per_layer)`` MoE layers), the
  parameters added and those expanding every MoE layer would have added, and the saving
  ``1 − added / if every layer`` (of the means); a last row sums the tasks after the first.

Uncertainty (:mod:`bench.analysis.stats`, from the records' per-sample scores; records without them show ``n/a``):

* **95% CI** columns next to Last, MAA and BWT, and an interval after every diagonal cell: percentile
  bootstrap over the test records of every task and over the configuration's seeds.
* **Rank group**: compact letters on Last; the best configuration not yet lettered leads the next letter,
  which every configuration below it whose Last is not significantly different from the leader's also
  gets (paired bootstrap).
* **Paired differences** per group: for every pair of configurations, the difference in Last and BWT with
  its paired-bootstrap 95% interval and p-value, significant when the interval excludes 0.

The tables are split into two labelled sections: *Defaults* (every record the harness has, the methods'
defaults plus marked ablation and oracle rows) and *Tuned with equal budget*: the records of the
configurations ``python -m bench tune`` chose (``results/tune/chosen.json``: the same number of
validation-protocol trials per method), with the same table and paired differences, then every trial.

Everything is a pure function of the records (no timestamps, fixed ordering, fixed bootstrap seeds), so
regenerating from the same records writes byte-identical Markdown and CSV.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib import patheffects
from matplotlib.patches import Rectangle

from bench.analysis.learnability import LEARNABILITY_MARGIN, MARK, flagged_cells, record_chance, row_learnability
from bench.io.records import RecordError, atomic_write_text, read_record
from bench.analysis.stats import RESAMPLES, bootstrap, paired_difference, rank_groups

METRICS = (("last", "Last"), ("mft", "MFT"), ("maa", "MAA"), ("bwt", "BWT"), ("forgetting", "Forgetting"),
           ("fwt", "FWT"))
DASH = "–"
HEADER_NOTE = (
    "Metrics in percent, `mean ± std` over seeds (sample std; 0.00 for n=1; – where undefined, e.g. the "
    "per-stage metrics of joint training). *Params total* = parameters after the stream; *Params added* = "
    "`parameters[-1].total − (parameters[0].total − parameters[0].trained)`, the total after the stream minus "
    "what was frozen in the first stage (≈ the stage-0 backbone); *Trained/task* = mean over the tasks after the "
    "first of `parameters[k].trained`, the parameters stage k trained (for a growing method: what a new task can "
    "train; – with one stage); *Activated/token* after the stream; *Wall s* = "
    "mean total wall time per run. Rows sorted by Last (descending). `(oracle)` rows use the task identity at "
    "test time (upper bound); `[key=value]` rows are ablations with non-default hyper-parameters. *95% CI* = "
    "percentile bootstrap interval (2,000 resamples of the test records of every task and of the seeds, fixed "
    "generator seed) from the records' per-sample scores; n/a for records that lack them. *Rank group*: "
    "configurations sharing a letter are not significantly different in Last (paired bootstrap, 95%) from that "
    "letter's leader, the best configuration given the letter.")
TUNED_EMPTY = ("Empty: no tuning result (`results/tune/chosen.json`, written by `python -m bench tune`) yet. This "
               "section lists each method at the configuration its equal-budget tuning chose.")
TUNED_NOTE = ("Each method at the configuration `python -m bench tune` chose with the same number of trials for every "
              "method ({trials} per method: trial 0 = the defaults, the others drawn from the search space the method "
              "declares next to its hyper-parameters), scored by validation Last on a held-out part of every task's "
              "training split ({steps} steps per task, {limit} held-out records scored per task), never on a test "
              "record. Rows are the test-protocol records of the chosen configurations (a method whose defaults won "
              "shows its default records); every trial is listed under *Tuning trials* and in "
              "`results/tune/chosen.json`.")
# The config keys that differ between the runs of one comparison; the rest is the protocol.
PER_RUN_KEYS = ("method", "method_set", "seed")


# --- loading ---------------------------------------------------------------------------------------

def load_records(runs_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``*.json`` under ``runs_dir`` (sorted by file name), validated; any problem names the file."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise RecordError(f"no run folder {runs_dir}; run `python -m bench run` first or pass --runs")
    paths = sorted(runs_dir.glob("*.json"))
    if not paths:
        raise RecordError(f"no run records (*.json) under {runs_dir}")
    out = []
    for path in paths:
        try:
            record = read_record(path)
            _check_fields(record)
        except RecordError as e:
            msg = str(e)
            raise RecordError(msg if str(path) in msg else f"{path}: {msg}") from None
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:
            raise RecordError(f"{path}: malformed run record ({type(e).__name__}: {e})") from None
        out.append((path, record))
    return out


def _check_fields(r: dict[str, Any]) -> None:
    """The nested fields the leaderboard reads; read_record's validate only checks the top level."""
    for key in ("suite",):
        if key not in r:
            raise RecordError(f"run record lacks {key!r}")
    _ = (r["data"]["source"], r["backbone"]["config_hash"], r["seeds"]["run"], r["wall_time"]["total"])
    for key in ("steps_per_task", "batch_size", "lr"):
        _ = r["budget"][key]
    for key, _label in METRICS:
        _ = r["metrics"][key]
    if not r["parameters"]:
        raise RecordError("run record has an empty 'parameters' list")
    for p in r["parameters"]:
        _ = (p["total"], p["trained"], p["activated_per_token"])


# --- grouping --------------------------------------------------------------------------------------

def data_seed(r: dict[str, Any]) -> int:
    seeds = r.get("seeds") or {}
    return int(seeds.get("data", r["data"].get("data_seed", 0)) or 0)


def group_key(r: dict[str, Any]) -> tuple:
    """(suite, data source, backbone config hash, steps/task, batch size, lr, task order, data seed,
    shuffled). *shuffled* (``seeds.task_order`` not None) keeps a shuffle that happens to give the suite's
    own order apart from it; two shuffle seeds giving the same order share a group."""
    b = r["budget"]
    shuffled = (r.get("seeds") or {}).get("task_order") is not None
    return (r["suite"], r["data"]["source"], r["backbone"]["config_hash"], b["steps_per_task"], b["batch_size"],
            b["lr"], tuple(r["tasks"]), data_seed(r), shuffled)


def is_default_group(key: tuple) -> bool:
    """The suite's own task order and data seed 0."""
    *_budget, _order, dseed, shuffled = key
    return dseed == 0 and not shuffled


def order_hash(order: tuple) -> str:
    return hashlib.sha1(",".join(order).encode()).hexdigest()[:6]


def describe_group(key: tuple) -> str:
    suite, source, chash, steps, bs, lr, order, dseed, shuffled = key
    text = (f"suite `{suite}` · data `{source}` · backbone `{chash}` · budget: {steps} steps/task, "
            f"batch size {bs}, lr {lr:g} · order{' (shuffled)' if shuffled else ''}: {' → '.join(order)}")
    return text + (f" · data seed {dseed}" if dseed != 0 else "")


def group_slug(key: tuple) -> str:
    """Short and stable: a default group's slug names only suite, data, backbone and budget; a shuffled
    order adds ``o`` + 6 hex of the order's sha1, another data seed ``d<seed>``."""
    suite, source, chash, steps, bs, lr, order, dseed, shuffled = key
    extra = (f"-o{order_hash(order)}" if shuffled else "") + (f"-d{dseed}" if dseed != 0 else "")
    return _slug(f"{suite}-{source}-{chash}-{steps}x{bs}-lr{lr:g}{extra}")


def _group_sort_key(key: tuple) -> tuple:
    *base, order, dseed, shuffled = key
    return (not is_default_group(key), tuple(str(x) for x in base), dseed, shuffled, order)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v))


def changed_hparams(r: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters the run was given (``--set``: its config's ``method_set``), with the values
    the method resolved them to (the record's ``hparams``). Read from the record alone, so a label never
    depends on the defaults of the code that renders it; a record without ``method_set`` ran at defaults."""
    given = (r.get("config") or {}).get("method_set") or {}
    hp = _jsonable(r["hparams"])
    return {k: hp[k] for k in sorted(given) if k in hp}


def row_label(method: str, changed: dict[str, Any], oracle: bool) -> str:
    label = method
    if changed:
        label += " [" + ", ".join(f"{k}={_fmt_hp(v)}" for k, v in changed.items()) + "]"
    if oracle:
        label += " (oracle)"
    return label


def _fmt_hp(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, list):
        return "(" + ", ".join(_fmt_hp(x) for x in v) + ")"
    return json.dumps(v) if isinstance(v, str) else repr(v)


# --- aggregation -----------------------------------------------------------------------------------

def mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None, 0
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, 0.0, 1
    var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1)
    return m, math.sqrt(var), len(vals)


def fmt_mean_std(m: float | None, s: float | None) -> str:
    return DASH if m is None else f"{m:.2f} ± {s:.2f}"


def params_added(params: list[dict[str, Any]]) -> int:
    return int(params[-1]["total"]) - (int(params[0]["total"]) - int(params[0]["trained"]))


def trained_per_task(params: list[dict[str, Any]]) -> float | None:
    """Mean of ``trained`` over the stages after the first; None with a single stage."""
    later = [int(p["trained"]) for p in params[1:]]
    return sum(later) / len(later) if later else None


@dataclasses.dataclass
class Row:
    label: str
    method: str
    kind: str
    records: list[dict[str, Any]]          # sorted by run seed, then run_id
    changed: dict[str, Any]
    oracle: bool

    @property
    def first(self) -> dict[str, Any]:
        return self.records[0]

    def stat(self, key: str) -> tuple[float | None, float | None, int]:
        return mean_std([r["metrics"][key] for r in self.records])

    @property
    def last_mean(self) -> float:
        m = self.stat("last")[0]
        return -math.inf if m is None else m

    @functools.cached_property
    def boot(self):
        """:class:`bench.analysis.stats.Replicates` of the row's records, or None without per-sample scores."""
        return bootstrap(self.records)

    def interval(self, key: str) -> tuple[float, float] | None:
        boot = self.boot
        return None if boot is None else boot.interval(key)


NA = "n/a"
CI_KEYS = (("last", "Last"), ("maa", "MAA"), ("bwt", "BWT"))


def fmt_interval(ci: tuple[float, float] | None, digits: int = 2) -> str:
    return NA if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def rank_letters(rows: list[Row]) -> list[str]:
    """:func:`bench.analysis.stats.rank_groups` on Last for rows in table order (best first); n/a without per-sample
    scores."""
    return [letters or NA for letters in rank_groups([row.boot for row in rows], "last")]


def build_groups(records: list[dict[str, Any]]) -> list[tuple[tuple, list[Row]]]:
    """[(group key, rows sorted by Last desc then label)]: the default groups (suite order, data seed 0)
    first, each set in sorted key order."""
    groups: dict[tuple, dict[tuple, list[dict[str, Any]]]] = {}
    for r in records:
        method = r["method"]
        oracle = bool(r["oracle_task_id"])
        rkey = (method, json.dumps(_jsonable(r["hparams"]), sort_keys=True), oracle)
        groups.setdefault(group_key(r), {}).setdefault(rkey, []).append(r)
    out = []
    for gkey in sorted(groups, key=_group_sort_key):
        rows = []
        for (method, _hp, oracle), recs in groups[gkey].items():
            recs = sorted(recs, key=lambda r: (r["seeds"]["run"], r["run_id"]))
            changed = changed_hparams(recs[0])
            kinds = [k for k, on in (("oracle", oracle), ("ablation", bool(changed)),
                                     ("joint", bool(recs[0]["joint_training"]))) if on]
            rows.append(Row(label=row_label(method, changed, oracle), method=method,
                            kind=", ".join(kinds) or "method", records=recs, changed=changed, oracle=oracle))
        rows.sort(key=lambda row: (-row.last_mean, row.label))
        out.append((gkey, rows))
    return out


def table_frame(rows: list[Row]):
    data = []
    for row, letters in zip(rows, rank_letters(rows)):
        d: dict[str, Any] = {"Method": row.label, "Kind": row.kind, "n": len(row.records), "Rank group": letters}
        for key, name in METRICS:
            m, s, _n = row.stat(key)
            d[name] = fmt_mean_std(m, s)
            if key in dict(CI_KEYS):
                d[f"{name} 95% CI"] = DASH if m is None else fmt_interval(row.interval(key))
        p = row.first["parameters"]
        d["Params total"] = f"{int(p[-1]['total']):,}"
        d["Params added"] = f"{params_added(p):,}"
        tpt = trained_per_task(p)
        d["Trained/task"] = DASH if tpt is None else f"{round(tpt):,}"
        d["Activated/token"] = f"{int(p[-1]['activated_per_token']):,}"
        d["Wall s"] = f"{mean_std([r['wall_time']['total'] for r in row.records])[0]:.1f}"
        data.append(d)
    return pd.DataFrame(data)


def csv_frame(groups: list[tuple[tuple, list[Row]]]):
    data = []
    for gkey, rows in groups:
        suite, source, chash, steps, bs, lr, order, dseed, shuffled = gkey
        for row, letters in zip(rows, rank_letters(rows)):
            d: dict[str, Any] = {"suite": suite, "data_source": source, "backbone_config_hash": chash,
                                 "steps_per_task": steps, "batch_size": bs, "lr": lr, "task_order": " ".join(order),
                                 "task_order_shuffled": shuffled, "data_seed": dseed, "method": row.method,
                                 "label": row.label, "kind": row.kind, "oracle_task_id": row.oracle,
                                 "n": len(row.records)}
            for key, _name in METRICS:
                m, s, _n = row.stat(key)
                d[f"{key}_mean"] = None if m is None else round(m, 6)
                d[f"{key}_std"] = None if s is None else round(s, 6)
                if key in dict(CI_KEYS):
                    ci = row.interval(key)
                    d[f"{key}_ci_low"] = None if ci is None else round(ci[0], 6)
                    d[f"{key}_ci_high"] = None if ci is None else round(ci[1], 6)
            d["rank_group"] = None if letters == NA else letters
            p = row.first["parameters"]
            d["params_total"] = int(p[-1]["total"])
            d["params_added"] = params_added(p)
            tpt = trained_per_task(p)
            d["trained_per_task"] = None if tpt is None else round(tpt, 3)
            d["activated_per_token"] = int(p[-1]["activated_per_token"])
            d["wall_time_s"] = round(mean_std([r["wall_time"]["total"] for r in row.records])[0], 3)
            info = row_learnability(row)
            d["tasks_learned"] = None if info.reason is not None else info.learned()
            d["tasks_judged"] = None if info.reason is not None else len(info.judged())
            ptl = ptl_accuracy(row)
            d["ptl_accuracy_mean"] = None if ptl is None or ptl[1] is None else round(ptl[1], 6)
            d["run_ids"] = " ".join(r["run_id"] for r in row.records)
            data.append(d)
    df = pd.DataFrame(data)
    for col in ("tasks_learned", "tasks_judged"):
        if col in df:
            df[col] = df[col].astype("Int64")  # integers, empty where unknown
    return df


# --- learnability and the task locator -------------------------------------------------------------

def group_tasks(rows: list[Row]) -> list[str]:
    """The group's tasks in first-seen order (rows in table order, each record's task order)."""
    return list(dict.fromkeys(t for row in rows for r in row.records for t in r["tasks"]))


def learnability_frame(rows: list[Row]):
    """Chance row, then one row per configuration: mean accuracy right after training on each task (joint
    training: its Last row), ``✗`` at or below chance + margin, its bootstrap 95% interval ``[lo, hi]`` where
    the records carry per-sample scores, and the count of tasks above chance + margin."""
    names = group_tasks(rows)
    infos = [row_learnability(row) for row in rows]
    chance_row: dict[str, Any] = {"Method": "chance"}
    for t in names:
        vals = sorted({round(i.chance[t], 1) for i in infos if i.chance.get(t) is not None})
        span = f"{vals[0]:.1f}" if len(vals) == 1 else f"{vals[0]:.1f}–{vals[-1]:.1f}" if vals else DASH
        chance_row[t] = span  # a range when the configurations' data (seeds, sizes) differ
    chance_row["tasks learned"] = ""
    data = [chance_row]
    for row, info in zip(rows, infos):
        d: dict[str, Any] = {"Method": info.label + (" (joint: Last row)" if info.joint else "")}
        cis = row.boot.diagonal_intervals() if row.boot is not None else {}
        for t in names:
            if t not in info.values:
                d[t] = DASH
                continue
            d[t] = f"{info.values[t]:.1f}" + (f" {MARK}" if t in info.failing() else "") + (
                f" {fmt_interval(cis[t], 1)}" if t in cis else "")
        d["tasks learned"] = DASH if info.reason is not None else f"{info.learned()}/{len(info.judged())}"
        data.append(d)
    return pd.DataFrame(data)


def pairwise_frame(rows: list[Row]):
    """One line per pair of configurations with per-sample scores (table order, the better-ranked first):
    the paired-bootstrap difference in Last and in BWT, its 95% interval, p-value and whether the interval
    excludes 0 (``yes``). Pairs whose test sets differ show n/a; None when fewer than two rows qualify."""
    usable = [row for row in rows if row.boot is not None]
    data = []
    for i, x in enumerate(usable):
        for y in usable[i + 1:]:
            d: dict[str, Any] = {"Method": x.label, "vs": y.label}
            for key, name in (("last", "Last"), ("bwt", "BWT")):
                diff = paired_difference(x.boot, y.boot, key)
                if diff is None:
                    d[f"Δ{name}"] = d[f"Δ{name} 95% CI"] = d[f"p ({name})"] = d[f"{name} significant"] = (
                        DASH if x.boot.test_sets == y.boot.test_sets else NA)
                    continue
                d[f"Δ{name}"] = f"{diff.point:+.2f}"
                d[f"Δ{name} 95% CI"] = fmt_interval((diff.low, diff.high))
                d[f"p ({name})"] = _fmt_p(diff.p)
                d[f"{name} significant"] = "yes" if diff.significant else "no"
            data.append(d)
    return pd.DataFrame(data) if data else None


def _fmt_p(p: float) -> str:
    return f"<{1 / RESAMPLES:.4f}" if p == 0 else f"{p:.4f}"


def _last_scores(r: dict[str, Any]) -> dict[str, Any]:
    scores = r.get("scores") or []
    return scores[-1] if scores and isinstance(scores[-1], dict) else {}


def _method_scores(r: dict[str, Any], task: str) -> dict[str, Any]:
    cell = _last_scores(r).get(task)
    return (cell.get("method") or {}) if isinstance(cell, dict) else {}


def has_ptl(row: Row) -> bool:
    """Whether every record of ``row`` carries the task locator's accuracy in its last row's scores."""
    return all(any("ptl_accuracy" in _method_scores(r, t) for t in r["tasks"]) for r in row.records)


def ptl_accuracy(row: Row) -> tuple[dict[str, float], float | None] | None:
    """({task: mean over seeds of the last row's ptl_accuracy, in %}, mean over those tasks), or None."""
    if not has_ptl(row):
        return None
    per_task: dict[str, float] = {}
    for t in dict.fromkeys(t for r in row.records for t in r["tasks"]):
        vals = [float(_method_scores(r, t)["ptl_accuracy"]) * 100 for r in row.records
                if "ptl_accuracy" in _method_scores(r, t)]
        if len(vals) == len(row.records):
            per_task[t] = sum(vals) / len(vals)
    return per_task, (sum(per_task.values()) / len(per_task) if per_task else None)


def ptl_frame(rows: list[Row]):
    names = group_tasks(rows)
    data = []
    for row in rows:
        res = ptl_accuracy(row)
        if res is None:
            continue
        per_task, mean = res
        d: dict[str, Any] = {"Method": row.label, "n": len(row.records)}
        d.update({t: DASH if t not in per_task else f"{per_task[t]:.1f}" for t in names})
        d["mean"] = DASH if mean is None else f"{mean:.1f}"
        data.append(d)
    return pd.DataFrame(data) if data else None


def ptl_confusion(row: Row) -> tuple[list[str], list[str], list[list[int]]]:
    """(true tasks, predicted tasks, counts[true][predicted]) summed over the row's records, last row."""
    true = list(dict.fromkeys(t for r in row.records for t in r["tasks"]))
    predicted_keys = {p for r in row.records for t in r["tasks"]
                      for p in (_method_scores(r, t).get("ptl_predicted") or {})}
    predicted = true + sorted(predicted_keys - set(true))
    counts = [[0] * len(predicted) for _ in true]
    for r in row.records:
        for t in r["tasks"]:
            for p, n in (_method_scores(r, t).get("ptl_predicted") or {}).items():
                counts[true.index(t)][predicted.index(p)] += int(n)
    return true, predicted, counts


# --- growth per task -------------------------------------------------------------------------------

GROWTH_KEY = "added_parameters_if_every_layer_expanded"


def _task_reports(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{task: its method report}: matched by the report's ``after`` (or ``task``), else by position."""
    reports = r.get("method_reports")
    if not isinstance(reports, list):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for i, rep in enumerate(reports):
        if not isinstance(rep, dict):
            continue
        name = rep.get("after", rep.get("task"))
        if name is None and i < len(r["tasks"]):
            name = r["tasks"][i]
        if name is not None:
            out[str(name)] = rep
    return out


def has_growth(row: Row) -> bool:
    """Whether every record of ``row`` reports what expanding every layer would have added, for a task after
    the first."""
    return all(any(GROWTH_KEY in _task_reports(r).get(t, {}) for t in r["tasks"][1:]) for r in row.records)


@dataclasses.dataclass(frozen=True)
class Growth:
    """Means over seeds for one task (or, for the total, of the per-seed sums over the tasks after the first)."""

    expanded: float
    moe_layers: float | None
    added: float
    if_every_layer: float

    @property
    def saving(self) -> float | None:
        """1 − added / if every layer, in %; None when expanding every layer would add nothing."""
        return None if self.if_every_layer <= 0 else 100.0 * (1.0 - self.added / self.if_every_layer)


def growth_per_task(row: Row) -> tuple[dict[str, Growth], Growth | None] | None:
    """({task after the first: Growth}, the total over those tasks or None), or None for a row whose method
    reports no growth. A task enters only when every record of the row reports it."""
    if not has_growth(row):
        return None
    tasks = list(dict.fromkeys(t for r in row.records for t in r["tasks"][1:]))
    reports = [_task_reports(r) for r in row.records]
    per_task: dict[str, Growth] = {}
    for t in tasks:
        reps = [rep.get(t) for rep in reports]
        if not all(rep is not None and GROWTH_KEY in rep for rep in reps):
            continue
        layers = [len(rep["experts_per_layer"]) for rep in reps if isinstance(rep.get("experts_per_layer"), dict)]
        per_task[t] = Growth(
            expanded=_mean([len(rep.get("expanded_layers") or []) for rep in reps]),
            moe_layers=_mean(layers) if len(layers) == len(reps) else None,
            added=_mean([float(rep["added_parameters"]) for rep in reps]),
            if_every_layer=_mean([float(rep[GROWTH_KEY]) for rep in reps]))
    if not per_task:
        return per_task, None
    total = Growth(expanded=sum(g.expanded for g in per_task.values()), moe_layers=None,
                   added=sum(g.added for g in per_task.values()),
                   if_every_layer=sum(g.if_every_layer for g in per_task.values()))
    return per_task, total


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def growth_frame(rows: list[Row]):
    names = group_tasks(rows)
    data = []
    for row in rows:
        res = growth_per_task(row)
        if res is None:
            continue
        per_task, total = res
        entries = [(t, per_task[t]) for t in names if t in per_task]
        if total is not None:
            entries.append((f"all {len(per_task)} after the first", total))
        for name, g in entries:
            layers = "" if g.moe_layers is None else f" of {g.moe_layers:g}"
            data.append({"Method": row.label, "n": len(row.records), "Task": name,
                         "Layers expanded": f"{g.expanded:.2f}{layers}", "Params added": f"{round(g.added):,}",
                         "If every layer": f"{round(g.if_every_layer):,}",
                         "Saving %": DASH if g.saving is None else f"{g.saving:.1f}"})
    return pd.DataFrame(data) if data else None


# --- plots -----------------------------------------------------------------------------------------

def plot_name(kind: str, gkey: tuple, label: str | None = None) -> str:
    return f"{kind}-{group_slug(gkey)}" + (f"-{_slug(label)}" if label else "") + ".png"


def draw_plots(groups: list[tuple[tuple, list[Row]]], plots_dir: Path) -> list[Path]:
    """Per group: one accuracy-matrix heatmap per row (its first seed's record; a last "chance" row under
    the matrix, every cell at or below its task's chance with its number in red, and the cells judged by the
    learnability gate hatched where at or below chance + margin), a task-locator confusion matrix per row
    that carries one, parameters vs task index for all rows on one chart, and Last vs parameters added (one
    point per row, with its bootstrap 95% interval as an error bar where the records carry per-sample
    scores). Returns the PNG paths."""
    matplotlib.use("Agg")
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    meta = {"Software": None}  # no version string in the PNG: same records → same bytes
    written: list[Path] = []

    def save(fig, name: str) -> None:
        path = plots_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=80, metadata=meta)
        plt.close(fig)
        written.append(path)

    for gkey, rows in groups:
        for row in rows:
            save(_heatmap(row), plot_name("heatmap", gkey, row.label))
            if has_ptl(row):
                save(_confusion_plot(row), plot_name("confusion", gkey, row.label))
        save(_params_plot(rows), plot_name("params", gkey))
        save(_last_vs_added_plot(rows), plot_name("last-vs-added", gkey))
    return written


def _heatmap(row: Row):
    """The accuracy matrix of the row's first seed, a chance row under it, below-chance numbers in red
    and the judged cells at or below chance + margin hatched."""
    r = row.first
    A = r["accuracy_matrix"]
    ylabels = r.get("matrix_rows") or (["base"] + [f"after {t}" for t in r["tasks"]])[:len(A)]
    chance = record_chance(r).levels
    levels = [chance.get(t) if chance else None for t in r["tasks"]]
    shown = [list(map(float, line)) for line in A]
    if any(c is not None for c in levels):
        shown.append([math.nan if c is None else float(c) for c in levels])
    fig, ax = plt.subplots(figsize=(0.6 * len(r["tasks"]) + 2.5, 0.45 * len(shown) + 2.1))
    im = ax.imshow(shown, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    xlabels = [t if c is None else f"{t} ({c:.1f})" for t, c in zip(r["tasks"], levels)]
    ax.set_xticks(range(len(r["tasks"])), xlabels, rotation=45, ha="right", fontsize=8)
    ylabs = [f"after {y}" if y != "base" else y for y in ylabels] + (["chance"] if len(shown) > len(A) else [])
    ax.set_yticks(range(len(shown)), ylabs, fontsize=8)
    if len(shown) > len(A):
        ax.axhline(len(A) - 0.5, color="white", linewidth=2)
    for i, rowv in enumerate(shown):
        for j, v in enumerate(rowv):
            if math.isnan(v):
                continue
            below = i < len(A) and levels[j] is not None and v <= levels[j]
            style = (dict(color="red", fontsize=8, fontweight="bold",
                          path_effects=[patheffects.withStroke(linewidth=2, foreground="white")]) if below
                     else dict(color="white" if v < 50 else "black", fontsize=7))
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", **style)
    # the judged cells (diagonal; joint training: the last row) at or below chance + margin
    for i, j in flagged_cells(r, chance):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="red",
                               linewidth=1.5))
    note = (f"\nred: at or below chance (last row)\nhatched: judged, at or below chance + "
            f"{LEARNABILITY_MARGIN:g}" if chance else "\nchance level unknown")
    ax.set_title(f"{row.label} — accuracy (%), seed {r['seeds']['run']}{note}", fontsize=8)
    fig.colorbar(im, ax=ax)
    return fig


def _confusion_plot(row: Row):
    """The task locator's confusion matrix after the last task (% of each task's test samples)."""
    true, predicted, counts = ptl_confusion(row)
    pct = [[100.0 * c / sum(line) if sum(line) else 0.0 for c in line] for line in counts]
    fig, ax = plt.subplots(figsize=(0.6 * len(predicted) + 2.5, 0.45 * len(true) + 2.0))
    im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(predicted)), predicted, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(true)), true, fontsize=8)
    for i, line in enumerate(pct):
        for j, v in enumerate(line):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if v >= 50 else "black")
    ax.set_xlabel("predicted task", fontsize=8)
    ax.set_ylabel("true task", fontsize=8)
    ax.set_title(f"{row.label} — task locator after the last task\n% of each task's test samples, "
                 f"{len(row.records)} seed(s) summed", fontsize=8)
    fig.colorbar(im, ax=ax)
    return fig


def _params_plot(rows: list[Row]):
    """Total parameters after each task, one line per row."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        totals = [int(p["total"]) for p in row.first["parameters"]]
        ax.plot(range(1, len(totals) + 1), totals, marker="o", label=row.label)
    ax.set_xlabel("task index (stage)")
    ax.set_ylabel("total parameters")
    ax.set_title("parameters after each task", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def _last_vs_added_plot(rows: list[Row]):
    """Last vs parameters added, one point per row (bootstrap 95% interval where it exists)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        x, y = params_added(row.first["parameters"]), row.stat("last")[0]
        ci = row.interval("last")
        if ci is None:
            ax.scatter([x], [y])
        else:  # asymmetric: the percentile interval need not be centred on the point
            ax.errorbar([x], [y], yerr=[[max(0.0, y - ci[0])], [max(0.0, ci[1] - y)]], fmt="o", capsize=3)
        ax.annotate(row.label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("parameters added over the stream")
    ax.set_ylabel("Last (%)")
    ax.set_title("Last vs parameters added (bars: bootstrap 95% CI where per-sample scores exist)", fontsize=9)
    return fig


# --- rendering -------------------------------------------------------------------------------------

def render_markdown(groups: list[tuple[tuple, list[Row]]], n_records: int) -> str:
    lines = ["# Leaderboard", "",
             "_Generated by `python -m bench leaderboard` — do not edit; regenerate from `results/runs/`._", "",
             f"{n_records} run record(s), {len(groups)} comparable group(s).", "", HEADER_NOTE, "",
             "# Defaults", "",
             "Every method at its default hyper-parameters, at the budget its group names (ablation and oracle rows "
             "marked); no hyper-parameter was searched.", ""]
    for i, (gkey, rows) in enumerate(groups, 1):
        lines += [f"## Group {i}: {describe_group(gkey)}", "",
                  table_frame(rows).to_markdown(index=False, disable_numparse=True), "",
                  f"![parameters per task](plots/{plot_name('params', gkey)}) "
                  f"![Last vs parameters added](plots/{plot_name('last-vs-added', gkey)})", ""]
        lines += (_pairwise_section(rows) + _learnability_section(gkey, rows) + _ptl_section(gkey, rows)
                  + _growth_section(rows))
    return "\n".join(lines).rstrip("\n") + "\n"


def tuned_records(records: list[dict[str, Any]], chosen: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of the configurations ``bench tune`` chose: per tuned method, the records with the
    chosen ``--set`` values run on the protocol the tuning was for (its config without method, ``--set``
    and seed)."""
    wanted = {m: {k: str(v) for k, v in c["set"].items()} for m, c in chosen["methods"].items()}
    out = []
    for r in records:
        config = r["config"]
        if (r["method"] in wanted and config.get("method_set", {}) == wanted[r["method"]]
                and _same_protocol(config, chosen["protocol"])):
            out.append(r)
    return out


def _same_protocol(config: dict[str, Any], protocol: dict[str, Any]) -> bool:
    """Whether a record's config is the protocol's; a setting the record predates counts as the
    protocol's value (records keep the config keys of the code that wrote them)."""
    rest = {k: v for k, v in config.items() if k not in PER_RUN_KEYS}
    return set(rest) <= set(protocol) and all(rest.get(k, v) == v for k, v in protocol.items())


def trials_frame(chosen: dict[str, Any]):
    """One line per trial: method, trial, its ``--set`` values, validation Last, whether it was chosen."""
    data = [{"Method": method, "Trial": row["trial"],
             "Settings": ", ".join(f"{k}={v}" for k, v in sorted(row["set"].items())) or "defaults",
             "Validation Last": f"{row['validation_last']:.2f}", "Chosen": "✓" if row["trial"] == c["trial"] else ""}
            for method, c in sorted(chosen["methods"].items()) for row in c["trials"]]
    return pd.DataFrame(data)


def render_tuned(records: list[dict[str, Any]], chosen: dict[str, Any] | None) -> str:
    """The *Tuned with equal budget* section: per group the main table and the paired differences of
    the chosen configurations' records, then every tuning trial."""
    lines = ["# Tuned with equal budget", ""]
    if chosen is None:
        return "\n".join(lines + [TUNED_EMPTY, ""])
    val = chosen.get("validation", {})
    lines += [TUNED_NOTE.format(trials=chosen.get("trials_per_method", "?"), steps=val.get("steps_per_task", "?"),
                                limit=val.get("limit") or "all"), ""]
    tuned = tuned_records(records, chosen)
    for i, (gkey, rows) in enumerate(build_groups(tuned), 1):
        for row in rows:
            row.kind = row.kind.replace("ablation", "tuned")
        lines += [f"## Tuned group {i}: {describe_group(gkey)}", "",
                  table_frame(rows).to_markdown(index=False, disable_numparse=True), ""] + _pairwise_section(rows)
    missing = sorted(set(chosen["methods"]) - {r["method"] for r in tuned})
    if missing:
        lines += ["Chosen configurations without a test-protocol record yet (`python -m bench sweep --tuned "
                  "results/tune/chosen.json`): " + ", ".join(missing) + ".", ""]
    lines += ["### Tuning trials", "", trials_frame(chosen).to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(lines)


def read_chosen(path: Path) -> dict[str, Any] | None:
    """``bench tune``'s chosen.json, or None when there is none."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise RecordError(f"{path}: not valid JSON ({e}); rerun python -m bench tune") from None


def _pairwise_section(rows: list[Row]) -> list[str]:
    lines = ["### Paired differences (Last, BWT)", "",
             "For each pair of configurations (the better-ranked first): Δ = first − second on the full test sets, "
             "its 95% interval from a paired bootstrap (the same resampled test records and seed positions for "
             "both, 2,000 resamples), the two-sided p-value `2·min(P(Δ*≤0), P(Δ*≥0))`, and *significant* when the "
             "interval excludes 0. No correction for multiple comparisons; – where BWT is undefined (joint "
             "training); n/a where the test sets differ.", ""]
    missing = [row.label for row in rows if row.boot is None]
    if missing:
        lines += ["No per-sample scores (records written before they were stored; intervals and tests n/a): "
                  + ", ".join(missing) + ".", ""]
    frame = pairwise_frame(rows)
    if frame is None:
        lines += ["Fewer than two configurations carry per-sample scores: no pair to test.", ""]
    else:
        lines += [frame.to_markdown(index=False, disable_numparse=True), ""]
    return lines


def _links(kind: str, gkey: tuple, rows: list[Row]) -> str:
    return " · ".join(f"[{row.label}](plots/{plot_name(kind, gkey, row.label)})" for row in rows)


def _learnability_section(gkey: tuple, rows: list[Row]) -> list[str]:
    unknown = sorted({info.reason for info in map(row_learnability, rows) if info.reason is not None})
    lines = ["### Right after training (diagonal) vs chance", "",
             f"Mean over seeds of `A[t+1][t]`, the accuracy on task t right after training on it; chance = the "
             f"majority-answer accuracy of the test split (`python -m tasks.chance`; a record's `tasks_chance` "
             f"where present). `{MARK}`: at or below chance + {LEARNABILITY_MARGIN:g} points, i.e. not learned; "
             f"*tasks learned* counts the cells above it. Joint training has no diagonal: its row is the accuracy "
             f"after the stream (Last row). `python -m bench check` fails on any `{MARK}` of a default "
             f"configuration of a registered method (no changed hyper-parameter, or every record run without "
             f"`--set`).", ""]
    lines += [f"Chance level unknown: {reason}." for reason in unknown] + ([""] if unknown else [])
    lines += [learnability_frame(rows).to_markdown(index=False, disable_numparse=True), "",
              f"Accuracy matrices (first seed; last row: chance; red numbers: at or below chance; hatched red: "
              f"judged cells at or below chance + {LEARNABILITY_MARGIN:g}): "
              + _links("heatmap", gkey, rows), ""]
    return lines


def _ptl_section(gkey: tuple, rows: list[Row]) -> list[str]:
    frame = ptl_frame(rows)
    if frame is None:
        return []
    ptl_rows = [row for row in rows if has_ptl(row)]
    return ["### Task locator (PTL) accuracy after the last task", "",
            "Share of each task's test samples whose task the locator identified, after the last task (mean over "
            "seeds, %; `mean` = over tasks). Oracle rows are given the task identity.", "",
            frame.to_markdown(index=False, disable_numparse=True), "",
            "Confusion matrices (rows: true task, columns: predicted task, % of the row; counts summed over "
            "seeds): " + _links("confusion", gkey, ptl_rows), ""]


def _growth_section(rows: list[Row]) -> list[str]:
    frame = growth_frame(rows)
    if frame is None:
        return []
    return ["### Growth per task", "",
            "Per task after the first, mean over seeds of the method's report for that task: MoE layers it "
            "expanded (of the MoE layers there are), parameters it added, and what expanding every MoE layer "
            "would have added; *Saving %* = 1 − added / if every layer. The last row of each method sums the "
            "tasks after the first.", "",
            frame.to_markdown(index=False, disable_numparse=True), ""]


def generate(runs_dir: Path = Path("results/runs"), out_dir: Path = Path("results"), *,
             plots: bool = True) -> dict[str, Any]:
    """Read every record, write LEADERBOARD.md, leaderboard.csv and (optionally) the plots. The tuned
    section reads ``bench tune``'s result next to the records (``<runs_dir>/../tune/chosen.json``)."""
    loaded = load_records(runs_dir)
    groups = build_groups([r for _p, r in loaded])
    out_dir = Path(out_dir)
    md_path, csv_path = out_dir / "LEADERBOARD.md", out_dir / "leaderboard.csv"
    chosen = read_chosen(Path(runs_dir).parent / "tune" / "chosen.json")
    md = render_markdown(groups, len(loaded)) + "\n" + render_tuned([r for _p, r in loaded], chosen)
    csv = csv_frame(groups).to_csv(index=False, lineterminator="\n")
    png = draw_plots(groups, out_dir / "plots") if plots else []
    atomic_write_text(md_path, md)
    atomic_write_text(csv_path, csv)
    return {"records": len(loaded), "groups": groups, "markdown": md_path, "csv": csv_path, "plots": png}
