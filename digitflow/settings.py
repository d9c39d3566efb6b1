"""Typed settings, one object per service, read from the environment and validated at start.

Nothing here is read at import time: each service calls ``X.from_env()`` when it starts, and
tests build the objects directly.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Self, get_type_hints
from urllib.parse import urlsplit

from digitflow.errors import ConfigurationError

# Secrets that were obviously copied from an example and never changed.
PLACEHOLDER_SECRETS = frozenset({"changeme", "change-me", "password", "secret", "placeholder", "example", "redis"})


def shipped_models_dir() -> Path:
    """The model versions installed with the core (``digitflow/shipped_models``): MODEL_DIR's default."""
    return Path(str(resources.files("digitflow") / "shipped_models"))


def _default_var_dir() -> Path:
    return Path.cwd() / "var"


def _parse(raw: str, kind: Any, name: str) -> Any:
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in {"1", "true", "yes", "on"}:
                return True
            if low in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(raw)
        if kind == tuple[str, ...]:
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        return raw
    except ValueError as exc:
        raise ConfigurationError(f"{name}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from exc


@dataclass(frozen=True)
class CoreSettings:
    """What every service needs: where Redis is, how long jobs live, where logs go."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    job_ttl_s: int = 24 * 3600
    # Logs, Prometheus files, the embedded registry and prediction log: ./var unless VAR_DIR says.
    var_dir: Path = field(default_factory=_default_var_dir)
    # The shipped model versions (<name>/<version>/): registered when the registry is empty, and
    # served when no registry knows a model.
    model_dir: Path = field(default_factory=shipped_models_dir)
    log_format: str = "json"  # json | text
    log_level: str = "INFO"
    # Task events let Flower show every task; they cost one extra Redis publish per task event.
    task_events: bool = True
    # How long Redis keeps an unacknowledged message before giving it to another worker: far
    # above a batch's run time (< 1 s), and the bound on recovery after a worker's main process dies.
    visibility_timeout_s: int = 30
    # Time limits of one stage batch, both below VISIBILITY_TIMEOUT_S so that Redis never hands
    # a batch that is still running to a second worker. At the soft limit the batch's unfinished
    # jobs fail with `stage_timeout` (no strike); at the hard limit the pool kills the process
    # and the batch's live jobs fail the same way. 0 = auto: half and four fifths of
    # VISIBILITY_TIMEOUT_S (15 s and 24 s by default; a batch normally runs well under 1 s).
    stage_soft_time_limit_s: float = 0.0
    stage_time_limit_s: float = 0.0
    # A job not finished this long after it was accepted is failed (code deadline_exceeded), so
    # nothing stays queued forever even if a message is lost (e.g. Redis killed without AOF sync).
    job_deadline_s: int = 900
    # A job whose stage process died this many times while running it alone is failed as poison.
    max_strikes: int = 2
    heartbeat_interval_s: float = 2.0
    heartbeat_ttl_s: float = 10.0
    models: tuple[str, ...] = ("digits",)
    default_model: str = "digits"
    # The model registry (MLflow). Empty: the embedded default, a SQLite store and an artifact
    # folder under VAR_DIR/mlflow; in compose, the mlflow server's URL.
    mlflow_tracking_uri: str = ""
    # Promotion: how long the registry waits for every live inference process to load the new
    # version and answer; inference processes re-read the registry view this often in case a
    # deploy message was missed.
    deploy_timeout_s: float = 20.0
    deploy_recheck_s: float = 3.0
    # Monitoring (docs/monitoring.md): the prediction log's SQL database
    # (empty: SQLite at VAR_DIR/predictions.db), and what an outlier gets: `flag` (a label and
    # outlier: true) or `reject` (the job succeeds with label null).
    database_url: str = ""
    outlier_policy: str = "flag"
    prediction_log: bool = True
    # Canary releases (docs/models.md): a new candidate serves CANARY_SHARE of live jobs
    # (CANARY_MODE=canary) or runs beside production on every job, its answer only logged (shadow).
    canary_mode: str = "canary"
    canary_share: float = 0.1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Build settings from ``env`` (default ``os.environ``); raise ConfigurationError."""
        env = os.environ if env is None else env
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.upper()
            if key in env:
                values[f.name] = _parse(env[key], hints[f.name], key)
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError(f"REDIS_URL must be a redis:// URL, got {self.redis_url!r}")
        if self.job_ttl_s < 60:
            raise ConfigurationError("JOB_TTL_S must be at least 60 seconds")
        if self.log_format not in {"json", "text"}:
            raise ConfigurationError("LOG_FORMAT must be json or text")
        if self.default_model not in self.models:
            raise ConfigurationError(f"DEFAULT_MODEL {self.default_model!r} is not in MODELS")
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ConfigurationError("HEARTBEAT_TTL_S must exceed HEARTBEAT_INTERVAL_S")
        if self.visibility_timeout_s < 5 or self.job_deadline_s <= self.visibility_timeout_s:
            raise ConfigurationError("VISIBILITY_TIMEOUT_S must be >= 5 and below JOB_DEADLINE_S")
        if self.max_strikes < 1:
            raise ConfigurationError("MAX_STRIKES must be >= 1")
        if not 0 < self.soft_time_limit_s < self.hard_time_limit_s < self.visibility_timeout_s:
            raise ConfigurationError(
                "need 0 < STAGE_SOFT_TIME_LIMIT_S < STAGE_TIME_LIMIT_S < VISIBILITY_TIMEOUT_S (0 = auto)"
            )
        if self.canary_mode not in {"canary", "shadow"} or not 0 < self.canary_share <= 1:
            raise ConfigurationError("CANARY_MODE must be canary or shadow, CANARY_SHARE in (0, 1]")
        if self.deploy_timeout_s <= 0 or self.deploy_recheck_s <= 0:
            raise ConfigurationError("DEPLOY_TIMEOUT_S and DEPLOY_RECHECK_S must be > 0")
        if self.outlier_policy not in {"flag", "reject"}:
            raise ConfigurationError("OUTLIER_POLICY must be flag or reject")
        if not self.model_dir.is_dir():
            raise ConfigurationError(f"MODEL_DIR {self.model_dir} is not a directory")
        password = urlsplit(self.redis_url).password
        if password is not None and password.lower() in PLACEHOLDER_SECRETS:
            raise ConfigurationError("REDIS_URL carries a placeholder password; set a real secret")

    @property
    def soft_time_limit_s(self) -> float:
        return self.stage_soft_time_limit_s or 0.5 * self.visibility_timeout_s

    @property
    def hard_time_limit_s(self) -> float:
        return self.stage_time_limit_s or 0.8 * self.visibility_timeout_s

    @property
    def stalled_after_s(self) -> float:
        """How long an unfinished job may go without a stage starting before the gateway's
        sweep sends it again: past a batch's hard limit, the visibility timeout that gives a
        dead worker's message back and kombu's restore sweep (5 s), with 10 s to spare. Below
        JOB_DEADLINE_S for this to act (69 s against 900 s by default)."""
        return self.hard_time_limit_s + self.visibility_timeout_s + 5.0 + 10.0

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    @property
    def prediction_db_url(self) -> str:
        """The prediction log's SQLAlchemy URL (DATABASE_URL, else SQLite under VAR_DIR)."""
        return self.database_url or f"sqlite:///{self.var_dir / 'predictions.db'}"

    @property
    def tracking_uri(self) -> str:
        """Where the MLflow registry lives (MLFLOW_TRACKING_URI, else the embedded SQLite store)."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.var_dir / 'mlflow' / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path | None:
        """The artifact folder of the embedded store; None when a tracking server decides."""
        return (
            None
            if self.mlflow_tracking_uri.startswith(("http://", "https://"))
            else self.var_dir / "mlflow" / "artifacts"
        )


@dataclass(frozen=True)
class GatewaySettings(CoreSettings):
    max_upload_mb: float = 10.0
    # 12 MP: a 4000x3000 phone photo, the largest common upload. Pixels, not bytes, are what
    # decoding costs (a 16-bit PNG of 40 MP is 88 KB and takes seconds); see docs/reliability.md.
    max_image_pixels: int = 12_000_000
    max_parts: int = 64
    # Pixels of all the images of one request together (UploadBudget): four full-size photos.
    max_request_pixels: int = 48_000_000
    max_wait_s: float = 30.0
    # Micro-batching: jobs arriving together travel as one chain (see gateway/batcher.py).
    batch_max: int = 32
    batch_wait_ms: float = 5.0
    # Unfinished batches per gateway process; 0 = auto (live preprocess processes + 1).
    batches_in_flight: int = 0
    # Overload: answer 429 rather than let latency grow without bound, when the jobs waiting
    # (in this process's batcher plus the stage queues) or the oldest one's age pass a limit.
    max_queue_depth: int = 2000
    max_queue_age_s: float = 10.0
    # ... or when Redis has used this share of its maxmemory (digitflow/store_memory.py): the
    # rest is the headroom the jobs already accepted need to finish.
    redis_memory_high_water: float = 0.8
    sweep_interval_s: float = 5.0
    api_keys: tuple[str, ...] = ()
    # Bearer token of the model write actions (promote, rollback); empty disables them.
    admin_token: str = ""
    # Models whose jobs go to their own inference queue, `inference.<name>` (e.g. "fashion"),
    # so that workers started with `-Q inference.<name>` serve them alone.
    dedicated_model_queues: tuple[str, ...] = ()
    # How long a promote or rollback request waits for the registry service's answer.
    registry_timeout_s: float = 60.0

    def validate(self) -> None:
        super().validate()
        if not 0 < self.max_upload_mb <= 1024:
            raise ConfigurationError("MAX_UPLOAD_MB must be in (0, 1024]")
        if not 1 <= self.max_image_pixels <= self.max_request_pixels:
            raise ConfigurationError("need 1 <= MAX_IMAGE_PIXELS <= MAX_REQUEST_PIXELS")
        if not 1 <= self.batch_max <= 1024:
            raise ConfigurationError("BATCH_MAX must be in [1, 1024]")
        if self.batch_wait_ms < 0 or self.batches_in_flight < 0:
            raise ConfigurationError("BATCH_WAIT_MS and BATCHES_IN_FLIGHT must be >= 0 (0 = auto)")
        if self.admin_token and (len(self.admin_token) < 12 or self.admin_token.lower() in PLACEHOLDER_SECRETS):
            raise ConfigurationError("ADMIN_TOKEN must be a real secret of at least 12 characters")
        if self.registry_timeout_s <= 0:
            raise ConfigurationError("REGISTRY_TIMEOUT_S must be > 0")
        if not 0 < self.redis_memory_high_water < 1:
            raise ConfigurationError("REDIS_MEMORY_HIGH_WATER must be in (0, 1)")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@dataclass(frozen=True)
class WorkerSettings(CoreSettings):
    """Settings of a stage worker; ``metrics_port`` is where its Prometheus text is served."""

    metrics_port: int = 0
    max_image_pixels: int = 12_000_000  # the gateway's limit (GatewaySettings), checked again
    # Fault injection for the reliability tests only: a preprocess worker whose input contains
    # this byte string kills its own process (SIGABRT), as a decoder crash would. Empty = off.
    fault_crash_marker: str = ""
    # ... or, with this one, sleeps for twice VISIBILITY_TIMEOUT_S, as a decoder stuck on a
    # hostile file would, so that only the stage's time limits can end the batch. Empty = off.
    fault_delay_marker: str = ""
    # Every stage: hold each batch this long once its jobs are claimed, so that a test can kill
    # or stop a worker that certainly holds one (digitflow/stage.py). 0 = off.
    fault_hold_s: float = 0.0
    # A consuming process that has not beaten for this long is dead, and a live worker hands
    # its unacknowledged messages on (digitflow/deliveries.py); one killed outright is seen
    # sooner, by its closed connection. A worker that cannot run its beat thread this long
    # (paused, cut off) has its batch taken over, and the job's fence refuses its writes.
    delivery_lease_s: float = 4.0

    def validate(self) -> None:
        super().validate()
        if not 0.4 <= self.delivery_lease_s < self.visibility_timeout_s:
            raise ConfigurationError("need 0.4 <= DELIVERY_LEASE_S < VISIBILITY_TIMEOUT_S")
        if self.fault_hold_s < 0:
            raise ConfigurationError("FAULT_HOLD_S must be >= 0")


@dataclass(frozen=True)
class InferenceSettings(WorkerSettings):
    device: str = "auto"  # auto | cpu | cuda
    torch_threads: int = 1
    # Where a fault-injection test (or an operator) may point one worker at other weights.
    model_path_override: str = ""
    # Model versions each inference process keeps in memory; the least recently used goes first.
    max_loaded_models: int = 8

    def validate(self) -> None:
        super().validate()
        if self.device not in {"auto", "cpu", "cuda"}:
            raise ConfigurationError("DEVICE must be auto, cpu or cuda")
        if self.torch_threads < 1:
            raise ConfigurationError("TORCH_THREADS must be >= 1")
        if self.max_loaded_models < 1:
            raise ConfigurationError("MAX_LOADED_MODELS must be >= 1")

    @property
    def model_cache_dir(self) -> Path:
        """Where model versions downloaded from the registry are kept (once per machine)."""
        return self.var_dir / "model-cache"


@dataclass(frozen=True)
class RegistrySettings(WorkerSettings):
    """The registry service: keeps the Redis view of the registry, promotes and rolls back."""

    # Register the shipped MODEL_DIR/<name>/<version> directories when the registry is empty.
    bootstrap: bool = True
    # How often the registry re-reads MLflow, so aliases moved elsewhere (the MLflow UI) deploy too.
    registry_sync_s: float = 10.0


@dataclass(frozen=True)
class MonitorSettings(WorkerSettings):
    """The monitor service (monitor_worker) and the retraining it triggers (training worker)."""

    # How often beat runs `monitor.run`; windows are 1h/1d/7d times WINDOW_SCALE (a demo
    # compresses time with e.g. 0.005), the series buckets BUCKET_S wide, at most MAX_BUCKETS.
    monitor_interval_s: float = 60.0
    window_scale: float = 1.0
    bucket_s: float = 3600.0
    max_buckets: int = 48
    # Alert thresholds: a test's p-value below P_VALUE, PSI above PSI, accuracy this far below the
    # reference's held-out accuracy, outlier rate above OUTLIER_RATE; at least MIN_JOBS in a window.
    p_value: float = 0.01
    psi: float = 0.2
    accuracy_drop: float = 0.05
    outlier_rate: float = 0.2
    # A KS test alerts only with an effect this large too: with hundreds of jobs, a tiny
    # systematic difference (photo preprocessing vs. raw MNIST) is "significant" but harmless.
    ks_effect: float = 0.25
    min_jobs: int = 50
    sample_size: int = 300
    permutations: int = 200
    # Retraining: started on a drift or accuracy alert when this many labelled, non-outlier
    # inputs arrived since the last retrain; the candidate must beat production on the held-back
    # recent slice and lose at most RETRAIN_MARGIN on the fixed held-out split.
    auto_retrain: bool = True
    retrain_min_labels: int = 200
    retrain_holdback: float = 0.3
    retrain_margin: float = 0.01
    retrain_epochs: int = 6
    retrain_cooldown_s: float = 3600.0
    # Canary decision (docs/models.md): once the candidate has MIN_CANARY_JOBS jobs, the monitor
    # promotes it if no live signal is worse than production's by more than CANARY_MARGIN, else
    # retires it.
    min_canary_jobs: int = 200
    canary_margin: float = 0.02
    # Retention of the prediction log (0: keep forever): the inputs and embeddings of unlabelled
    # rows go after PIXELS_RETENTION_DAYS (labelled ones are the retraining data and stay), whole
    # rows after PREDICTIONS_RETENTION_DAYS (beyond "quarter 1", the oldest accuracy-by-age bucket).
    pixels_retention_days: float = 30.0
    predictions_retention_days: float = 400.0

    def validate(self) -> None:
        super().validate()
        if self.monitor_interval_s <= 0 or self.window_scale <= 0 or self.bucket_s <= 0:
            raise ConfigurationError("MONITOR_INTERVAL_S, WINDOW_SCALE and BUCKET_S must be > 0")
        if not 0 < self.p_value < 1 or not 0 < self.retrain_holdback < 1:
            raise ConfigurationError("P_VALUE and RETRAIN_HOLDBACK must be in (0, 1)")
        if self.min_canary_jobs < 1 or not 0 <= self.canary_margin < 1:
            raise ConfigurationError("MIN_CANARY_JOBS must be >= 1 and CANARY_MARGIN in [0, 1)")
        if self.sample_size < 20 or self.permutations < 20:
            raise ConfigurationError("SAMPLE_SIZE and PERMUTATIONS must be >= 20")
        week = 7 * self.window_scale
        for key, days in (("PIXELS", self.pixels_retention_days), ("PREDICTIONS", self.predictions_retention_days)):
            # The 7d window's input drift needs the embeddings of the whole window.
            if days < 0 or 0 < days < week:
                raise ConfigurationError(f"{key}_RETENTION_DAYS must be 0 (keep) or >= {week:g} (the 7d window)")
