"""The time split a run prints at its end (and stores as ``wall_time`` / ``peak_rss_mb`` in its record)."""
from __future__ import annotations

PHASES = (("stage0", "stage 0"), ("data", "data"), ("training", "training"),
          ("method", "method work (probing, locator fitting, expansion)"), ("evaluation", "evaluation"),
          ("tracking", "lm-eval tracking"))


def time_split(wall_time: dict[str, float], peak_rss_mb: float) -> str:
    """``wall_time`` holds seconds per phase plus ``total``; what no phase covers (checkpoints, record
    writing, set-up) is shown as ``other``."""
    total = wall_time.get("total") or sum(v for k, v in wall_time.items() if k != "total")
    known = [(label, wall_time[key]) for key, label in PHASES if key in wall_time]
    known += [(key, v) for key, v in wall_time.items() if key != "total" and key not in dict(PHASES)]
    other = total - sum(v for _, v in known)
    rows = known + ([("other (checkpoints, record, set-up)", other)] if other > 0.005 else [])
    width = max(len(label) for label, _ in rows)
    lines = [f"time split ({total:.1f} s in all):"]
    lines += [f"  {label:<{width}}  {v:8.1f} s  {100 * v / total if total else 0:5.1f} %" for label, v in rows]
    lines.append(f"peak memory (max RSS): {peak_rss_mb:.0f} MB")
    return "\n".join(lines)
