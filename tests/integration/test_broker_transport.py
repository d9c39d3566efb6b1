"""The broker transport every service uses, against a real Redis: kombu's Redis transport with
one client per channel (digitflow/broker.py). kombu builds a new ``redis.Redis`` per publish and
acknowledgement unless the channel hands out a shared one, and building one costs more than the
LPUSH it sends."""

from __future__ import annotations

import msgpack

from digitflow.broker import Channel, Transport
from digitflow.celery_app import hop_options, make_celery
from digitflow.messages import make_batch
from digitflow.settings import CoreSettings
from digitflow.tasks import PREPROCESS


def test_publishes_share_one_client_and_follow_a_new_pool(redis_url: str) -> None:
    app = make_celery("test", CoreSettings.from_env({"REDIS_URL": redis_url}))
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)
        # Still a redis:// URI: Flower's broker page picks its queue reader by the scheme.
        assert conn.as_uri().startswith("redis://")
        channel = conn.default_channel
        assert isinstance(channel, Channel)
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second and first.connection_pool is channel.pool
        for i in range(3):
            batch = make_batch(f"b{i}", [{"job_id": f"{i}" * 32, "model": "digits"}])
            app.send_task(PREPROCESS, args=(batch,), connection=conn, **hop_options("preprocess"))
        with channel.conn_or_acquire() as after:
            assert after is first, "sending built no client of its own"
        queue = conn.SimpleQueue("preprocess", no_ack=True, accept=["msgpack"])
        ids = [msgpack.unpackb(queue.get(timeout=2).body, raw=False)[0][0]["batch_id"] for _ in range(3)]
        assert ids == ["b0", "b1", "b2"]
        # kombu drops its pools after a lost connection: the next client is built on the new pool.
        channel._disconnect_pools()
        with channel.conn_or_acquire() as third:
            assert third is not first and third.connection_pool is channel.pool
            assert third.ping()
