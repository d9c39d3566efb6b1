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

Everything else (BRPOP on the async pool, acks, visibility timeout, restores) is kombu's own.
``make_celery`` installs this class as the transport of ``redis://`` URLs rather than naming it in
``broker_transport``: a connection reports its transport as its URI's scheme, and Flower's broker
page picks its queue reader by that scheme (with ``digitflow.broker:Transport://...`` it listed
no queue at all).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

TRANSPORT = "digitflow.broker:Transport"


class Channel(kombu_redis.Channel):
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


def install() -> None:
    """Make ``redis://`` and ``rediss://`` broker URLs use :class:`Transport` in this process."""
    TRANSPORT_ALIASES["redis"] = TRANSPORT
    TRANSPORT_ALIASES["rediss"] = TRANSPORT
