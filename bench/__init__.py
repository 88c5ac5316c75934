"""continual-moe-bench harness: it knows nothing about any single method or task."""
import os

# Nothing is ever fetched from a hub, and tokenizers keeps to one thread under forked loader workers.
# Set when the package is first imported, before any of its modules imports transformers or datasets
# (they read these variables at import time); an explicit setting in the environment wins.
for _name, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)
