"""The inference stage: serves registered model versions (per-process LRU cache, hot swap on
deploy). Training lives in ``training_worker``; the network and loading in ``digitnet``."""
