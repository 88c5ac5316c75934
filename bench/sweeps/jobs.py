"""Sweeps on a cluster: one submitit job per run (``python -m bench sweep ... --launcher slurm|local``).

Each job is a ``RunJob``: it runs one resolved config, or resumes it, or does nothing when its record
already exists (``run_or_resume``: the sweep's own skip/resume rules, decided inside the job, so a job that
SLURM preempts or times out and submitit requeues (``submitit.helpers.Checkpointable``) continues after
the run's last finished task, exactly as ``python -m bench run --resume RUN_DIR`` would). A job with one
process runs in the job's own Python process; with ``--gpus-per-run`` above 1 or ``--accelerate-config``
it starts ``accelerate launch [--config_file F] --num_processes G -m bench.sweeps.jobs CONFIG`` on its node
(accelerate's launcher, torchrun underneath), and the run's ranks decide the same way.

Every record lands in ``OUT/runs/`` whatever ran it; ``python -m bench leaderboard`` merges them.
submitit's own files (pickled jobs, stdout/stderr per job) go to ``OUT/submitit/`` unless ``--log-dir``.

    python -m bench.sweeps.jobs CONFIG_JSON OUT CACHE_DIR   # what a multi-process job launches on its node
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.run import protocol
from bench.io.checkpoint import config_key, existing_records, resumable_runs
from bench.config import ConfigError, RunConfig

try:  # a sweep without a launcher never needs submitit
    import submitit
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover - submitit is a dependency; keep `bench sweep` usable without it
    submitit = None  # type: ignore[assignment]
    Checkpointable = object  # type: ignore[assignment,misc]


def run_or_resume(cfg: RunConfig) -> Path:
    """The record of ``cfg``: the existing one, or the run resumed from an interrupted run directory of
    the same config, or a new run (the rules of ``bench.sweeps.sweep.plan``, found by ``bench.io.checkpoint``)."""
    runs = Path(cfg.out) / "runs"
    key = config_key(cfg.to_dict())
    found = existing_records(runs).get(key)
    if found is not None:
        return found
    resume = resumable_runs(runs).get(key)
    return protocol.run(cfg, resume=resume) if resume is not None else protocol.run(cfg)


@dataclass
class RunJob(Checkpointable):
    """One run of a sweep as a submitit job; requeued by submitit (``checkpoint``, inherited: the same
    job again) after a preemption or timeout, and then resumed from its last finished task."""

    config: dict[str, Any]      # RunConfig.to_dict()
    out: str
    cache_dir: str
    processes: int = 1          # >1: accelerate launch on the job's node
    accelerate_config: str | None = None
    torch_threads: int | None = None  # local jobs: the submitting process's, so records match in-process runs

    @property
    def label(self) -> str:
        return f"{self.config['method']} seed {self.config['seed']}"

    def __call__(self) -> str:
        if self.processes <= 1 and self.accelerate_config is None:
            if self.torch_threads:
                torch.set_num_threads(self.torch_threads)
            return str(run_or_resume(RunConfig.from_dict(self.config, out=self.out, cache_dir=self.cache_dir)))
        cmd = ["accelerate", "launch", "--num_processes", str(max(1, self.processes))]
        if self.accelerate_config:
            cmd += ["--config_file", self.accelerate_config]
        cmd += ["-m", "bench.sweeps.jobs", json.dumps(self.config), self.out, self.cache_dir]
        subprocess.run(cmd, check=True)
        return str(run_or_resume(RunConfig.from_dict(self.config, out=self.out, cache_dir=self.cache_dir)))


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``K/N`` (1 <= K <= N) -> (K, N); None stays None."""
    if spec is None:
        return None
    try:
        k, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ConfigError(f"--shard expects K/N such as 1/4 (this process runs the K-th of N parts), got {spec!r}.") from None
    if not 1 <= k <= n:
        raise ConfigError(f"--shard {spec}: K must be between 1 and N.")
    return k, n


def shard(planned: list, spec: tuple[int, int] | None) -> list:
    """The K-th of N interleaved parts of the full plan (runs K-1, K-1+N, ...; method-major order), so
    the N parts cover every run exactly once whichever records exist when each starts."""
    if spec is None:
        return planned
    k, n = spec
    return planned[k - 1::n]


def make_executor(launcher: str, folder: Path, *, gpus_per_run: int, timeout_min: int, partition: str | None,
                  cpus_per_run: int | None, mem_gb: int | None, array_parallelism: int | None,
                  account: str | None = None, qos: str | None = None):
    """A submitit executor for ``local`` (submitit's LocalExecutor: a subprocess per job on this machine)
    or ``slurm`` (one array of jobs, one node and ``gpus_per_run`` GPUs each)."""
    if launcher not in ("local", "slurm"):
        raise ConfigError(f"--launcher must be none, local or slurm, got {launcher!r}.")
    if submitit is None:
        raise ConfigError(f"--launcher {launcher} needs submitit (pip install submitit).")
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=launcher)
    params: dict[str, Any] = {"name": "bench-sweep", "timeout_min": timeout_min, "nodes": 1, "tasks_per_node": 1,
                              "gpus_per_node": gpus_per_run, "cpus_per_task": cpus_per_run, "mem_gb": mem_gb}
    if launcher == "slurm":
        extra = {k: v for k, v in {"account": account, "qos": qos}.items() if v}
        params.update(slurm_partition=partition, slurm_array_parallelism=array_parallelism,
                      slurm_additional_parameters=extra or None)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def submit(planned: list, launcher: str, folder: Path, *, processes: int, accelerate_config: str | None,
           wait: bool, progress: bool = True, **executor_args: Any) -> tuple[list, list[Path]]:
    """Submit every planned run that has no record: ``local`` one job at a time (each waited for, as an
    in-process sweep runs them), ``slurm`` as one job array. Returns (jobs, records written; the records
    only for jobs waited for)."""
    todo = [p for p in planned if p.existing is None]
    executor = make_executor(launcher, folder, **executor_args)
    threads = torch.get_num_threads() if launcher == "local" else None
    jobs_ = [RunJob(p.config.to_dict(), p.config.out, p.config.cache_dir, processes, accelerate_config, threads)
             for p in todo]
    submitted, written = [], []
    if launcher == "local":
        for job in jobs_:
            handle = executor.submit(job)
            submitted.append(handle)
            if progress:
                print(f"job {handle.job_id}: {job.label} (logs {handle.paths.stderr})", flush=True)
            written.append(Path(_result(handle, job)))
        return submitted, written
    with executor.batch():
        handles = [executor.submit(job) for job in jobs_]
    for handle, job in zip(handles, jobs_):
        submitted.append(handle)
        if progress:
            print(f"job {handle.job_id}: {job.label}", flush=True)
    if wait:
        written = [Path(_result(h, j)) for h, j in zip(handles, jobs_)]
    return submitted, written


def _result(handle, job: RunJob) -> str:
    try:
        return handle.result()
    except Exception as e:  # submitit re-raises the job's failure with its traceback
        raise RuntimeError(f"sweep job {handle.job_id} ({job.label}) failed; its log: {handle.paths.stderr}\n{e}") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of a multi-process job's ranks (under ``accelerate launch``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    config, out, cache_dir = argv
    run_or_resume(RunConfig.from_dict(json.loads(config), out=out, cache_dir=cache_dir))
    return 0


if __name__ == "__main__":  # the package's import has set the offline environment
    sys.exit(main())
