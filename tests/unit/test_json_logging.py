"""The JSON log line carries every field an event was logged with (not a fixed list)."""

from __future__ import annotations

import json
import logging

from digitflow.observability import JsonFormatter, log_event


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("preprocess"))
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_event_fields_are_all_in_the_line() -> None:
    logger = logging.getLogger("test.json_logging")
    handler = _Capture()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log_event(logger, "batch_done", stage="preprocess", job_ids=["a", "b"], failed=0, duration_ms=1.5, reason=None)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("crashed", extra={"event": "crash", "error_code": "internal", "data": {"args": "..."}})
    finally:
        logger.removeHandler(handler)
    done, crash = handler.lines
    assert done == {
        "ts": done["ts"],
        "level": "info",
        "service": "preprocess",
        "logger": "test.json_logging",
        "message": "batch_done",
        "event": "batch_done",
        "stage": "preprocess",
        "job_ids": ["a", "b"],
        "failed": 0,
        "duration_ms": 1.5,
    }
    assert crash["event"] == "crash" and crash["error_code"] == "internal" and "ValueError: boom" in crash["exc"]
    assert "args" not in crash and "exc_text" not in crash and "data" not in crash  # Celery's task-argument repr
