"""Sweeps through submitit (bench/sweeps/jobs.py): ``--shard K/N`` splits a plan into disjoint parts that cover it,
and a run made as a submitit job (``--launcher local``: submitit's LocalExecutor, a subprocess per job, the
code path a SLURM job takes) writes the same record as the in-process sweep, into the same results folder,
whose leaderboard merges both."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import main
from bench.config import ConfigError
from bench.sweeps.jobs import RunJob, parse_shard, shard
from bench.io.records import read_record
from bench.sweeps.sweep import plan

pytestmark = pytest.mark.integration

TINY = ["--tasks", "vqav2,imagenet", "--steps-per-task", "4", "--batch-size", "8", "--limit-train", "64",
        "--limit-test", "16"]


def test_shards_are_disjoint_and_cover_the_plan(tmp_path):
    planned = plan(["seq-ft", "multitask", "moelora"], [0, 1], "tiny", {"out": str(tmp_path)})
    parts = [shard(planned, (k, 3)) for k in (1, 2, 3)]
    keys = [(p.method, p.seed) for part in parts for p in part]
    assert sorted(keys) == sorted((p.method, p.seed) for p in planned) and len(keys) == len(set(keys)) == 6
    assert [len(p) for p in parts] == [2, 2, 2] and shard(planned, None) == planned
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "x", "1-2"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)


def test_dry_run_of_a_shard_lists_its_part(tmp_path, capsys):
    assert main(["sweep", "--methods", "seq-ft,multitask", "--seeds", "0,1", *TINY, "--out", str(tmp_path),
                 "--shard", "2/2", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["shard 2/2: 2 run(s) of the sweep", "run   seq-ft seed 1", "run   multitask seed 1",
                     "2 to run, 0 to skip"]


def test_local_launcher_shard_writes_the_in_process_record(session_cache, tmp_path, monkeypatch, capsys):
    """seq-ft seed 1 in process; then the sweep of seeds 0,1 with --shard 2/2 --launcher local runs seed 1
    again as a submitit job into another folder: the two records agree; a rerun of that shard skips it."""
    import os

    monkeypatch.setenv("CMB_CACHE", session_cache)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    flags = ["--methods", "seq-ft", *TINY, "--no-plots"]
    alone, jobs = tmp_path / "alone", tmp_path / "jobs"
    assert main(["sweep", *flags, "--seeds", "1", "--out", str(alone)]) == 0
    assert main(["sweep", *flags, "--seeds", "0,1", "--shard", "2/2", "--launcher", "local",
                 "--out", str(jobs)]) == 0
    out = capsys.readouterr().out
    assert "job " in out and "seq-ft seed 1" in out and "when every job is done" in out
    (a,), (b,) = [[read_record(p) for p in (d / "runs").glob("*.json")] for d in (alone, jobs)]
    for key in ("accuracy_matrix", "parameters", "metrics", "config"):
        assert a[key] == b[key], key
    assert [t["loss_curve"] for t in a["training"]] == [t["loss_curve"] for t in b["training"]]
    assert list((jobs / "submitit").iterdir()), "submitit wrote no job files"

    # the same shard again: its run has a record, nothing is submitted; the leaderboard merges the folder
    assert main(["sweep", *flags, "--seeds", "0,1", "--shard", "2/2", "--launcher", "local", "--out", str(jobs)]) == 0
    assert "0 to run, 1 to skip" in capsys.readouterr().out
    assert main(["leaderboard", "--runs", str(jobs / "runs"), "--out", str(jobs), "--no-plots"]) == 0
    assert "seq-ft" in (jobs / "leaderboard.csv").read_text()
    assert os.environ["CMB_CACHE"] == session_cache


def test_run_job_resumes_an_interrupted_run(tmp_path, monkeypatch):
    """A requeued job (submitit calls ``checkpoint`` and resubmits the same RunJob) resumes the run
    directory of its config, or returns the record when there is one."""
    import bench.run.protocol
    from bench.config import build_config

    cfg = build_config("tiny", method="seq-ft", seed=0, tasks="vqav2,imagenet", out=str(tmp_path))
    job = RunJob(cfg.to_dict(), cfg.out, cfg.cache_dir)
    assert job.checkpoint().function is job  # submitit's requeue: the same callable again
    run_dir = tmp_path / "runs" / "20260101T000000Z-seq-ft-s0"
    (run_dir / "task-00").mkdir(parents=True)
    import json

    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
    calls = []
    monkeypatch.setattr(bench.run.protocol, "run", lambda c, resume=None: calls.append(resume) or Path("r.json"))
    assert job() == "r.json" and calls == [run_dir]


def test_slurm_submission_is_one_job_array_with_the_run_flags(tmp_path, monkeypatch, capsys):
    """On a machine without SLURM: stand-ins for srun and sbatch (sbatch keeps the script it is given and
    answers like SLURM) show what `--launcher slurm` submits: one array of 2 jobs, 8 GPUs each, the
    partition, time limit and array parallelism, every job a pickled RunJob of its run's config."""
    import pickle
    import stat

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho 'Submitted batch job 4242'\n")
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    out = tmp_path / "results"
    config = str(Path(__file__).resolve().parents[2] / "bench" / "configs" / "fsdp-8gpu.yaml")
    assert main(["sweep", "--methods", "cmoe", "--seeds", "0,1", *TINY, "--out", str(out), "--launcher", "slurm",
                 "--gpus-per-run", "8", "--accelerate-config", config, "--partition", "gpu", "--timeout-min", "600",
                 "--array-parallelism", "1"]) == 0
    printed = capsys.readouterr().out
    assert "job 4242_0: cmoe seed 0" in printed and "job 4242_1: cmoe seed 1" in printed
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-1%1", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu",
                 "#SBATCH --time=600", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1"):
        assert line in script, (line, script)
    pickled = sorted((out / "submitit").rglob("*_submitted.pkl"))
    assert len(pickled) == 2
    jobs = [pickle.loads(p.read_bytes()).function for p in pickled]
    assert sorted(j.config["seed"] for j in jobs) == [0, 1]
    assert all(j.processes == 8 and j.accelerate_config == config and j.out == str(out) for j in jobs)
