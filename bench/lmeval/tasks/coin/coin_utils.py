"""``!function`` hooks of the coin_<task> configs; the logic lives in :mod:`bench.lmeval.coin_tasks`."""
from bench.lmeval.coin_tasks import (aggregate_clean, aggregate_official, doc_to_image, load_coin,  # noqa: F401
                               process_results)
