"""Leaderboard: ``results/runs/*.json`` → ``results/LEADERBOARD.md``, ``results/leaderboard.csv`` and
small PNGs under ``results/plots/`` (design.md "Layout").

Records are only comparable when they share a task suite, a data source, a backbone (config hash)
and a budget (steps per task, batch size, lr), so there is one table per such group. Within a group a
row is one *configuration*: a method with one set of hyper-parameters and one oracle flag; its seeds
are aggregated as ``mean ± std`` (sample std, ddof=1; 0.00 for a single seed) with ``n`` the number of
records. Rows whose hyper-parameters differ from the method's defaults are ablations and name the
changed keys in their label (``cmoe [probing=False]``); oracle-task-id runs (an upper bound the design
keeps apart) carry ``(oracle)`` and are marked in the *Kind* column, as are joint-training runs.

Parameter columns (from the record's ``parameters`` list, one entry per stage, first seed's record):

* **Params total**: ``parameters[-1].total``, everything the model holds after the stream.
* **Params added**: ``parameters[-1].total - (parameters[0].total - parameters[0].trained)``, i.e. the
  total after the stream minus what was frozen during the first stage (≈ the stage-0 backbone). It counts
  the method's own first-stage parameters (adapters, experts, routers) plus all growth afterwards.
* **Activated/token**: ``parameters[-1].activated_per_token``.

Everything is a pure function of the records (no timestamps, fixed ordering), so regenerating from
the same records writes byte-identical Markdown and CSV.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

from bench.records import RecordError, atomic_write_text, read_record

METRICS = (("last", "Last"), ("mft", "MFT"), ("maa", "MAA"), ("bwt", "BWT"), ("forgetting", "Forgetting"),
           ("fwt", "FWT"))
DASH = "–"
HEADER_NOTE = (
    "Metrics in percent, `mean ± std` over seeds (sample std; 0.00 for n=1; – where undefined, e.g. the "
    "per-stage metrics of joint training). *Params total* = parameters after the stream; *Params added* = "
    "`parameters[-1].total − (parameters[0].total − parameters[0].trained)`, the total after the stream minus "
    "what was frozen in the first stage (≈ the stage-0 backbone); *Activated/token* after the stream; *Wall s* = "
    "mean total wall time per run. Rows sorted by Last (descending). `(oracle)` rows use the task identity at "
    "test time (upper bound); `[key=value]` rows are ablations with non-default hyper-parameters.")


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

def group_key(r: dict[str, Any]) -> tuple:
    b = r["budget"]
    return (r["suite"], r["data"]["source"], r["backbone"]["config_hash"], b["steps_per_task"], b["batch_size"],
            b["lr"])


def describe_group(key: tuple) -> str:
    suite, source, chash, steps, bs, lr = key
    return (f"suite `{suite}` · data `{source}` · backbone `{chash}` · budget: {steps} steps/task, "
            f"batch size {bs}, lr {lr:g}")


def group_slug(key: tuple) -> str:
    suite, source, chash, steps, bs, lr = key
    return _slug(f"{suite}-{source}-{chash}-{steps}x{bs}-lr{lr:g}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v))


def default_hparams(method: str) -> dict[str, Any] | None:
    """The method's default hyper-parameters as JSON values, or None for a method not registered here."""
    import methods

    try:
        return _jsonable(dataclasses.asdict(methods.hparams_for(method)))
    except methods.MethodError:
        return None


def changed_hparams(r: dict[str, Any], defaults: dict[str, Any] | None) -> dict[str, Any]:
    """Keys whose recorded value differs from the default (keys the record lacks count as default)."""
    if defaults is None:
        return {}
    hp = _jsonable(r["hparams"])
    return {k: hp[k] for k in sorted(hp) if k not in defaults or hp[k] != defaults[k]}


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


def build_groups(records: list[dict[str, Any]]) -> list[tuple[tuple, list[Row]]]:
    """[(group key, rows sorted by Last desc then label)], groups in sorted key order."""
    defaults_cache: dict[str, dict[str, Any] | None] = {}
    groups: dict[tuple, dict[tuple, list[dict[str, Any]]]] = {}
    for r in records:
        method = r["method"]
        if method not in defaults_cache:
            defaults_cache[method] = default_hparams(method)
        changed = changed_hparams(r, defaults_cache[method])
        oracle = bool(r["oracle_task_id"])
        rkey = (method, json.dumps(_jsonable(r["hparams"]), sort_keys=True), oracle)
        groups.setdefault(group_key(r), {}).setdefault(rkey, []).append(r)
    out = []
    for gkey in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        rows = []
        for (method, _hp, oracle), recs in groups[gkey].items():
            recs = sorted(recs, key=lambda r: (r["seeds"]["run"], r["run_id"]))
            changed = changed_hparams(recs[0], defaults_cache[method])
            kinds = [k for k, on in (("oracle", oracle), ("ablation", bool(changed)),
                                     ("joint", bool(recs[0]["joint_training"]))) if on]
            rows.append(Row(label=row_label(method, changed, oracle), method=method,
                            kind=", ".join(kinds) or "method", records=recs, changed=changed, oracle=oracle))
        rows.sort(key=lambda row: (-row.last_mean, row.label))
        out.append((gkey, rows))
    return out


def table_frame(rows: list[Row]):
    import pandas as pd

    data = []
    for row in rows:
        d: dict[str, Any] = {"Method": row.label, "Kind": row.kind, "n": len(row.records)}
        for key, name in METRICS:
            m, s, _n = row.stat(key)
            d[name] = fmt_mean_std(m, s)
        p = row.first["parameters"]
        d["Params total"] = f"{int(p[-1]['total']):,}"
        d["Params added"] = f"{params_added(p):,}"
        d["Activated/token"] = f"{int(p[-1]['activated_per_token']):,}"
        d["Wall s"] = f"{mean_std([r['wall_time']['total'] for r in row.records])[0]:.1f}"
        data.append(d)
    return pd.DataFrame(data)


def csv_frame(groups: list[tuple[tuple, list[Row]]]):
    import pandas as pd

    data = []
    for gkey, rows in groups:
        suite, source, chash, steps, bs, lr = gkey
        for row in rows:
            d: dict[str, Any] = {"suite": suite, "data_source": source, "backbone_config_hash": chash,
                                 "steps_per_task": steps, "batch_size": bs, "lr": lr, "method": row.method,
                                 "label": row.label, "kind": row.kind, "oracle_task_id": row.oracle,
                                 "n": len(row.records)}
            for key, _name in METRICS:
                m, s, _n = row.stat(key)
                d[f"{key}_mean"] = None if m is None else round(m, 6)
                d[f"{key}_std"] = None if s is None else round(s, 6)
            p = row.first["parameters"]
            d["params_total"] = int(p[-1]["total"])
            d["params_added"] = params_added(p)
            d["activated_per_token"] = int(p[-1]["activated_per_token"])
            d["wall_time_s"] = round(mean_std([r["wall_time"]["total"] for r in row.records])[0], 3)
            d["run_ids"] = " ".join(r["run_id"] for r in row.records)
            data.append(d)
    return pd.DataFrame(data)


# --- plots -----------------------------------------------------------------------------------------

def plot_name(kind: str, gkey: tuple, label: str | None = None) -> str:
    return f"{kind}-{group_slug(gkey)}" + (f"-{_slug(label)}" if label else "") + ".png"


def draw_plots(groups: list[tuple[tuple, list[Row]]], plots_dir: Path) -> list[Path]:
    """Per group: one accuracy-matrix heatmap per row (its first seed's record), parameters vs task index
    for all rows on one chart, and Last vs parameters added (one point per row). Returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
            r = row.first
            A = r["accuracy_matrix"]
            ylabels = r.get("matrix_rows") or (["base"] + [f"after {t}" for t in r["tasks"]])[:len(A)]
            fig, ax = plt.subplots(figsize=(0.6 * len(r["tasks"]) + 2.5, 0.45 * len(A) + 1.8))
            im = ax.imshow(A, cmap="viridis", vmin=0, vmax=100, aspect="auto")
            ax.set_xticks(range(len(r["tasks"])), r["tasks"], rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(A)), [f"after {y}" if y != "base" else y for y in ylabels], fontsize=8)
            for i, rowv in enumerate(A):
                for j, v in enumerate(rowv):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 50 else "black")
            ax.set_title(f"{row.label} — accuracy (%), seed {r['seeds']['run']}", fontsize=9)
            fig.colorbar(im, ax=ax)
            save(fig, plot_name("heatmap", gkey, row.label))

        fig, ax = plt.subplots(figsize=(6, 4))
        for row in rows:
            totals = [int(p["total"]) for p in row.first["parameters"]]
            ax.plot(range(1, len(totals) + 1), totals, marker="o", label=row.label)
        ax.set_xlabel("task index (stage)")
        ax.set_ylabel("total parameters")
        ax.set_title("parameters after each task", fontsize=9)
        ax.legend(fontsize=7)
        save(fig, plot_name("params", gkey))

        fig, ax = plt.subplots(figsize=(6, 4))
        for row in rows:
            x, y = params_added(row.first["parameters"]), row.stat("last")[0]
            ax.scatter([x], [y])
            ax.annotate(row.label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("parameters added over the stream")
        ax.set_ylabel("Last (%)")
        ax.set_title("Last vs parameters added", fontsize=9)
        save(fig, plot_name("last-vs-added", gkey))
    return written


# --- rendering -------------------------------------------------------------------------------------

def render_markdown(groups: list[tuple[tuple, list[Row]]], n_records: int) -> str:
    lines = ["# Leaderboard", "",
             "_Generated by `python -m bench leaderboard` — do not edit; regenerate from `results/runs/`._", "",
             f"{n_records} run record(s), {len(groups)} comparable group(s).", "", HEADER_NOTE, ""]
    for i, (gkey, rows) in enumerate(groups, 1):
        lines += [f"## Group {i}: {describe_group(gkey)}", "",
                  table_frame(rows).to_markdown(index=False, disable_numparse=True), "",
                  f"![parameters per task](plots/{plot_name('params', gkey)}) "
                  f"![Last vs parameters added](plots/{plot_name('last-vs-added', gkey)})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def generate(runs_dir: Path = Path("results/runs"), out_dir: Path = Path("results"), *,
             plots: bool = True) -> dict[str, Any]:
    """Read every record, write LEADERBOARD.md, leaderboard.csv and (optionally) the plots."""
    loaded = load_records(runs_dir)
    groups = build_groups([r for _p, r in loaded])
    out_dir = Path(out_dir)
    md_path, csv_path = out_dir / "LEADERBOARD.md", out_dir / "leaderboard.csv"
    md = render_markdown(groups, len(loaded))
    csv = csv_frame(groups).to_csv(index=False, lineterminator="\n")
    png = draw_plots(groups, out_dir / "plots") if plots else []
    atomic_write_text(md_path, md)
    atomic_write_text(csv_path, csv)
    return {"records": len(loaded), "groups": groups, "markdown": md_path, "csv": csv_path, "plots": png}
