"""digitflow's shared core: settings, job schema, Celery factory, job store, observability, CLI.

Nothing here imports Flask or torch, so every service can depend on it.
"""

__version__ = "0.1.0"
