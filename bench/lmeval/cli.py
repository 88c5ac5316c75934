"""lm-eval's own command line with the ``cmb`` model registered (lm-eval 0.4.x discovers models only
from its built-in table, not from installed plugins, so ``lm_eval --model cmb`` needs this import):

    python -m bench.lmeval.cli --model cmb --model_args run=results/runs/<run_id>,after_task=3 \\
        --tasks coin_textvqa --include_path bench/lmeval/tasks --batch_size 64 --device cpu

Every lm-eval flag works as usual; the model args (``run``, ``after_task``) also reach the tasks as
metadata, so the CoIN configs read that run's own test split. Nothing is downloaded (offline env).
"""
from __future__ import annotations

from lm_eval.__main__ import cli_evaluate

import bench.lmeval.model


def main() -> None:
    cli_evaluate()


if __name__ == "__main__":
    main()
