"""Who is calling: the client key (``API_KEYS``) or the admin token, and its fingerprint.

A job record keeps the fingerprint of the key that submitted it, never the key: a keyed
SHA-256 digest, so a leaked job record does not help guess a key. Idempotency keys and
feedback are scoped to that fingerprint (docs/api.md, "Credentials").
"""

from __future__ import annotations

import hashlib
import hmac

from flask import request

from digitflow.errors import ForbiddenError, UnauthorizedError
from gateway.services import GatewayServices

ANONYMOUS = "anonymous"  # every caller, while API_KEYS is empty
ADMIN = "admin"  # the admin token's fingerprint
_DOMAIN = b"digitflow-credential-v1"


def fingerprint(secret: str) -> str:
    return hmac.new(_DOMAIN, secret.encode(), hashlib.sha256).hexdigest()[:32]


def _presented() -> str:
    return (
        request.headers.get("X-API-Key") or request.headers.get("Authorization", "").removeprefix("Bearer ")
    ).strip()


def is_admin(svc: GatewayServices) -> bool:
    token = svc.settings.admin_token
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bool(token) and hmac.compare_digest(given.encode(), token.encode())


def client_credential(svc: GatewayServices) -> str:
    """The caller's client-key fingerprint (ANONYMOUS while API_KEYS is empty); raises
    UnauthorizedError (401) when keys are configured and none of them was presented."""
    keys = svc.settings.api_keys
    if not keys:
        return ANONYMOUS
    given = _presented()
    if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        raise UnauthorizedError("a valid API key is required (X-API-Key header)")
    return fingerprint(given)


def labelling_credential(svc: GatewayServices, job_id: str, owner: str | None, labeller: str) -> str:
    """The credential allowed to label ``job_id``: its submitter's key or the admin token.

    ``owner``/``labeller`` come from the job record (None: the record expired, after which only
    the admin token may label while API_KEYS is set). A label set by one credential can be
    changed only by that credential or the admin. Raises UnauthorizedError or ForbiddenError.
    """
    if is_admin(svc):
        return ADMIN
    credential = client_credential(svc)
    if owner is not None:
        owner = owner or ANONYMOUS  # a record from before owners were kept
    if owner is None and credential != ANONYMOUS:
        raise ForbiddenError("the job record expired: only the admin token can label it now", job_id=job_id)
    if owner is not None and owner != credential:
        raise ForbiddenError("feedback needs the credential that submitted the job", job_id=job_id)
    if labeller and labeller != credential:
        raise ForbiddenError("the label was set by another credential; only it can change it", job_id=job_id)
    return credential
