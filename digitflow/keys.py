"""Every Redis key digitflow uses: its type, lifetime, writer and readers.

The one place a key's name is spelled. Modules import the constant or call the function here;
none builds a ``df:`` name of its own (``tests/unit/test_keys.py`` checks that). TTLs in
seconds; "job TTL" is JOB_TTL_S (24 h by default).

| key                              | type    | TTL             | written by            | read by                     |
|----------------------------------|---------|-----------------|-----------------------|-----------------------------|
| df:job:<id>                      | hash    | job TTL         | gateway, every stage  | gateway, stages             |
| df:img:<id>                      | string  | job TTL, or     | gateway               | preprocess                  |
|                                  |         | deleted at end  |                       |                             |
| df:idem:<credential>:<key>       | string  | job TTL         | gateway (JSON: job    | gateway                     |
|                                  |         |                 | ids, body fingerprint)|                             |
| df:gateways                      | zset    | none (adopted   | every gateway (beat)  | gateway (backlog adoption)  |
|                                  |         | ones leave)     |                       |                             |
| df:backlog:<gateway>             | zset    | none (entries   | gateway (accepted,    | gateway (a live one adopts  |
|                                  |         | leave when sent)| not yet sent, or      | a dead one's)               |
|                                  |         |                 | stalled: sent again)  |                             |
| df:active                        | zset    | none (members   | gateway, stages       | gateway (deadline sweep)    |
|                                  |         | leave at end)   |                       |                             |
| df:done                          | channel | -               | stages (finished ids) | gateway (Prefer: wait)      |
| df:attempt:<stage>:<batch>       | string  | job TTL         | stages                | stages (redelivery count)   |
| df:suspect:<stage>:<batch>       | string  | job TTL         | stages                | stages (poison detection)   |
| df:sweeper:lock                  | string  | 0.9 x sweep     | gateway               | gateway                     |
| df:workers:<stage>               | zset    | none (pruned    | every worker (beat)   | gateway, registry, CLI      |
|                                  |         | past beat TTL)  |                       |                             |
| df:workers:processes:<stage>     | hash    | none            | every worker (beat)   | gateway (batch sizing)      |
| df:deliveries                    | hash    | none (entries   | every consumer (tag ->| every stage worker's keeper |
|                                  |         | leave at ack)   | owner), keepers       | (hands a dead owner's on)   |
| df:owners                        | zset    | none (dead ones | every consumer (beat) | every stage worker's keeper |
|                                  |         | are removed)    |                       |                             |
| df:models                        | hash    | none            | registry service      | gateway, inference, monitor |
| df:models:production             | hash    | none            | registry service      | inference (periodic check)  |
| df:deploy                        | channel | -               | registry service      | inference (deploy watcher)  |
| df:deploy:<id>:<phase>           | hash    | 1 h             | inference (acks)      | registry service            |
| df:registry:lock:<model>         | string  | 3 x deploy + 60 | registry, CLI (Lock)  | registry, CLI               |
| df:registry:seen:<request>       | string  | 1 h             | registry service      | registry service            |
| df:registry:reply:<request>      | list    | 10 min          | registry service      | gateway, CLI, training      |
| df:release:<model>               | hash    | 7 d (reset when | inference (served /   | monitor (canary decision)   |
|                                  |         | a canary starts)| failed per version)   |                             |
| df:monitor:report:<model>        | string  | none            | monitor               | gateway, CLI                |
| df:monitor:since:<model>         | hash    | none            | monitor               | monitor                     |
| df:monitor:retrain:<model>       | list    | none (50 kept)  | training              | gateway, CLI                |
| df:monitor:retrain-state:<model> | hash    | none            | (before store ids;    | monitor (moves it into the  |
|                                  |         |                 | now in the pred. log) | prediction log, or drops it)|
| df:monitor:retrain-lock:<model>  | string  | 1 h (Lock)      | monitor takes,        | monitor                     |
|                                  |         |                 | training releases     |                             |
| df:monitor:retrain-claim:<token> | string  | 24 h            | training              | training                    |
| df:monitor:pruned:<model>        | string  | none            | monitor               | monitor                     |
| df:store-id                      | string  | none            | first service to ask  | monitor, registry (logs)    |
| df:stores                        | hash    | none            | monitor (predictions),| monitor, registry           |
|                                  |         |                 | registry (mlflow)     |                             |
| df:deployment                    | string  | 15 s, renewed   | `digitflow run`       | `digitflow run`             |
| df:deployment:last               | string  | none            | `digitflow run`       | `digitflow run`             |

Redis runs with ``maxmemory`` and ``noeviction`` (compose.yaml; docs/reliability.md). Every
key made per job or per request has a TTL. The keys above without one are bounded by what
they hold, not by time: ``df:active`` by the jobs in flight (a member leaves when its job
ends, or at the deadline sweep); ``df:workers:*`` by the live worker processes (pruned past
the beat TTL); ``df:deliveries`` by the unacknowledged messages and ``df:owners`` by the live
consuming processes (a keeper removes a dead one); ``df:models``, ``df:models:production``
and every ``df:monitor:*`` key without a TTL hold one small entry per model (the retrain
list keeps its last 50). A TTL there would let a quiet model's registry view or monitoring
state vanish.

Celery's own keys on the same database (kombu's Redis transport): one list per queue
(``preprocess``, ``inference``, ``inference.<model>``, ``postprocess``, ``registry``,
``monitor``, ``training``), ``unacked`` / ``unacked_index`` / ``unacked_mutex`` (messages
delivered but not acknowledged: handed on by a keeper when their owner in ``df:deliveries``
dies, else redelivered after VISIBILITY_TIMEOUT_S) and
``_kombu.binding.*``.
"""

from __future__ import annotations

JOB_PREFIX = "df:job:"
IMAGE_PREFIX = "df:img:"
IDEMPOTENCY_PREFIX = "df:idem:"
ACTIVE_JOBS = "df:active"
DONE_CHANNEL = "df:done"
ATTEMPT_PREFIX = "df:attempt:"
SUSPECT_PREFIX = "df:suspect:"
SWEEP_LOCK = "df:sweeper:lock"
GATEWAYS = "df:gateways"
BACKLOG_PREFIX = "df:backlog:"

# Delivered, unacknowledged messages: which consuming process holds each (digitflow/deliveries.py).
DELIVERIES = "df:deliveries"
DELIVERY_OWNERS = "df:owners"

WORKERS_PREFIX = "df:workers:"
PROCESSES_PREFIX = "df:workers:processes:"

MODELS_VIEW = "df:models"
MODELS_PRODUCTION = "df:models:production"
DEPLOY_CHANNEL = "df:deploy"
DEPLOY_ACKS_PREFIX = "df:deploy:"
REGISTRY_LOCK_PREFIX = "df:registry:lock:"
REGISTRY_SEEN_PREFIX = "df:registry:seen:"
REGISTRY_REPLY_PREFIX = "df:registry:reply:"
RELEASE_PREFIX = "df:release:"  # + model: "<version>:served" / "<version>:failed" while a canary runs

MONITOR_PREFIX = "df:monitor:"

# Store identity (digitflow/store_identity.py): this Redis's own id, and per other store (the
# prediction log, MLflow) the id of the one that the Redis state pointing into it was written
# against. One deployment per Redis (digitflow_cli/deployment.py): the live owner, and the last.
STORE_ID = "df:store-id"
STORES = "df:stores"
DEPLOYMENT = "df:deployment"
DEPLOYMENT_LAST = "df:deployment:last"


def workers(stage: str) -> str:
    """Heartbeats of ``stage``'s workers (zset name -> last beat)."""
    return WORKERS_PREFIX + stage


def monitor(kind: str, model_or_token: str) -> str:
    """A monitoring key: ``kind`` is report, since, retrain, retrain-state, retrain-lock,
    retrain-claim or pruned."""
    return f"{MONITOR_PREFIX}{kind}:{model_or_token}"
