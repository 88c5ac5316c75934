"""Where a run's time goes: seconds per phase while it runs, and the split it prints at its end (the
record stores the same numbers as ``wall_time`` / ``peak_rss_mb``)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

PHASES = (("stage0", "stage 0"), ("data", "data"), ("training", "training"),
          ("method", "method work (probing, locator fitting, expansion)"), ("evaluation", "evaluation"),
          ("tracking", "lm-eval tracking"))


@dataclass
class PhaseTimer:
    """Seconds per phase, summed over every stretch of that phase."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, since: float) -> None:
        """Add the time from ``since`` (a ``time.perf_counter()`` reading) to now."""
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - since

    def add_seconds(self, phase: str, seconds: float) -> None:
        """Add ``seconds`` measured elsewhere (the trainer's own split of a stage)."""
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


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
