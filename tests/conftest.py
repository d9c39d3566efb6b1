"""Shared fixtures: a private real Redis, and real stacks of worker processes.

Tests never use the machine's own Redis: each session starts a redis-server on a free port
(with AOF, as in production) and every test gets a flushed database.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from digitflow_cli.supervisor import free_port, redis_argv, wait_for_redis

if TYPE_CHECKING:
    from digitflow.predlog import PredictionLog


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    data_dir: Path

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


def start_redis(data_dir: Path, port: int | None = None) -> RedisServer:
    port = port or free_port()
    argv = [*redis_argv(data_dir, port), "--logfile", str(data_dir / "redis.log")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(port, proc, data_dir)
    wait_for_redis(server.url())
    return server


def stop_redis(server: RedisServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    stop_redis(server)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url(1)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def wait_until(predicate: object, timeout_s: float = 30.0, interval_s: float = 0.1, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(params=["sqlite", "postgresql"])
def prediction_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh prediction-log database: SQLite in a temporary folder, or a private database on
    the PostgreSQL at TEST_POSTGRES_URL (compose's engine; skipped, with the reason, where none
    is reachable), dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'predictions.db'}"
        return
    url = create_postgres_database()
    if url is None:
        pytest.skip(f"no PostgreSQL (or no psycopg) at {POSTGRES_ADMIN_URL}")
    yield url
    drop_postgres_database(url)


@pytest.fixture
def prediction_log(prediction_db_url: str) -> Iterator[PredictionLog]:
    """A PredictionLog on each of ``prediction_db_url``'s databases, closed afterwards."""
    from digitflow.predlog import PredictionLog  # SQLAlchemy only for the tests that use it

    log = PredictionLog(prediction_db_url)
    yield log
    log.close()


def create_postgres_database() -> str | None:
    """Create a private database next to TEST_POSTGRES_URL's and return its URL; None where no
    PostgreSQL is reachable or psycopg is missing."""
    try:
        import psycopg  # noqa: F401  (the driver the URL names)
    except ImportError:
        return None
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    name = f"digitflow_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError:
        return None
    finally:
        admin.dispose()
    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()
