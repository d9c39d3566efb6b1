"""kombu's Redis transport, with one Redis client per channel instead of one per command.

kombu's Redis ``Channel.conn_or_acquire`` builds a new ``redis.Redis`` for every operation that
is not handed a client: each publish (``LPUSH``), each delivery's bookkeeping (``QoS.append``)
and each acknowledgement (``QoS.ack``). Building one copies redis-py's table of about 170
response callbacks (``CaseInsensitiveDict``); a py-spy profile of a stage worker's consumer
under load showed it as the largest single item (12% of its samples), and the same fix elsewhere
measured 20-24% of a worker's CPU (chrisguidry/docket#461). A client only checks connections out
of the channel's pool per command, so one client can serve every caller of the channel, any
thread included (pipelines stay per use). The client follows the pool: when kombu drops its
pools (a lost connection), the next command builds a client on the new one.

Its QoS also records which process holds each delivery (``df:deliveries``, in the same MULTI
as kombu's ``unacked`` entries) and only acknowledges or restores a delivery its process still
holds, so that a dead worker's messages can be handed on within seconds by a live one
(``digitflow/deliveries.py``). BRPOP, the visibility timeout (now a backstop) and the restore
itself are kombu's own.
``make_celery`` installs this class as the transport of ``redis://`` URLs rather than naming it in
``broker_transport``: a connection reports its transport as its URI's scheme, and Flower's broker
page picks its queue reader by that scheme (with ``digitflow.broker:Transport://...`` it listed
no queue at all).
"""

from __future__ import annotations

from collections.abc import Iterable
from time import time
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from digitflow.deliveries import owner_id
from digitflow.keys import DELIVERIES, DELIVERY_OWNERS

TRANSPORT = "digitflow.broker:Transport"

# KEYS: unacked index, unacked, deliveries. ARGV: tag, owner. An acknowledgement (or a reject
# without requeue) from a process whose delivery was handed on must not remove the new holder's.
_FORGET_LUA = """
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""


class QoS(kombu_redis.QoS):
    """kombu's ack emulation, with an owner per delivery (see the module docstring)."""

    _forget_script: Any = None

    def append(self, message: Any, delivery_tag: str) -> None:
        delivery = message.delivery_info
        me, now = owner_id(), time()
        with self.pipe_or_acquire() as pipe:  # MULTI: the delivery and its owner together
            pipe.zadd(self.unacked_index_key, {delivery_tag: now})
            pipe.hset(
                self.unacked_key, delivery_tag, dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
            )
            pipe.hset(DELIVERIES, delivery_tag, me)
            pipe.zadd(DELIVERY_OWNERS, {me: now})  # a beat: the keeper may not have started yet
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        self._forget(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:
            self.restore_by_tag(delivery_tag, leftmost=True, owner=owner_id())
        else:
            self._forget(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:
        delivered: Any = self._delivered  # kombu's own dict of this channel's deliveries
        with self.channel.conn_or_acquire(client) as client:
            for tag in delivered:
                self.restore_by_tag(tag, client=client, owner=owner_id())
        delivered.clear()

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False, owner: str | None = None) -> bool:
        """Push ``tag``'s message back to its queue and forget the delivery, once: only while
        ``owner`` holds it (any holder when None: the visibility-timeout sweep). True if pushed."""
        name = bytes_to_str(tag)

        def restore(pipe: Any) -> bool:
            raw, holder = pipe.hget(self.unacked_key, name), pipe.hget(DELIVERIES, name)
            if owner is not None and (holder is None or bytes_to_str(holder) != owner):
                return False
            pipe.multi()
            pipe.zrem(self.unacked_index_key, name)
            pipe.hdel(self.unacked_key, name)
            pipe.hdel(DELIVERIES, name)
            if raw:
                payload, exchange, routing_key = loads(bytes_to_str(raw))
                self.channel._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
            return bool(raw)

        with self.channel.conn_or_acquire(client) as client:
            return bool(client.transaction(restore, self.unacked_key, DELIVERIES, value_from_callable=True))

    def _forget(self, delivery_tag: str) -> None:
        with self.channel.conn_or_acquire() as client:
            if self._forget_script is None:
                self._forget_script = client.register_script(_FORGET_LUA)
            keys = [self.unacked_index_key, self.unacked_key, DELIVERIES]
            self._forget_script(keys=keys, args=[delivery_tag, owner_id()], client=client)


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's BRPOP/pub-sub client, created once by kombu itself
            return super()._create_client(asynchronous=True)
        client = self._shared_client
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


def restore_owned(connection: Any, tags: Iterable[str]) -> int:
    """Push back the deliveries this process owns now (a dead owner's, claimed by its keeper)
    to the front of their queues, through ``connection``'s channel; how many were pushed."""
    qos = connection.default_channel.qos
    return sum(qos.restore_by_tag(tag, owner=owner_id()) for tag in tags)


def install() -> None:
    """Make ``redis://`` and ``rediss://`` broker URLs use :class:`Transport` in this process."""
    TRANSPORT_ALIASES["redis"] = TRANSPORT
    TRANSPORT_ALIASES["rediss"] = TRANSPORT
