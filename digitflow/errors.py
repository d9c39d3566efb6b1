"""One error tree for every service.

Each error carries a stable, machine-readable ``code`` (what clients branch on), an HTTP
``status`` (what the gateway answers) and the ``stage`` that raised it (what a failed job
records). Arguments are passed to ``Exception.__init__`` so errors survive serialization.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DigitflowError(Exception):
    """Base of every error digitflow raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    # Set where the message and details are meant for the operator (file paths, library
    # exception text): a job's record then carries this sentence instead, and no details
    # (``public``); the service that raised it logs the rest.
    public_message: ClassVar[str | None] = None

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, details)
        self.message = message
        self.details = details

    def public(self) -> DigitflowError:
        """This error as a client may see it: itself, or the same code with ``public_message``."""
        if self.public_message is None:
            return self
        twin = type(self).__new__(type(self))
        DigitflowError.__init__(twin, self.public_message)
        return twin

    def to_dict(self, stage: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if stage is not None:
            body["stage"] = stage
        if self.details:
            body["details"] = self.details
        return body


class InvalidRequestError(DigitflowError):
    """The request itself is malformed (missing field, bad parameter)."""

    code = "invalid_request"
    status = 400


class EmptyImageError(InvalidRequestError):
    code = "empty_image"


class InvalidImageError(DigitflowError):
    """The bytes are not a decodable image (corrupt, truncated, not an image at all)."""

    code = "invalid_image"
    status = 400


class UnsupportedFormatError(InvalidImageError):
    """A real image, but in a format digitflow does not open (e.g. TIFF, PSD, SVG)."""

    code = "unsupported_format"
    status = 415


class ImageTooLargeError(InvalidImageError):
    """Too many pixels for the file size or in absolute terms (decompression bombs)."""

    code = "image_too_large"
    status = 413


class MetadataTooLargeError(InvalidImageError):
    """More ancillary data (text chunks, an ICC profile) than any real upload carries: refused
    from the header walk, before a decoder inflates any of it."""

    code = "metadata_too_large"
    status = 413


class PayloadTooLargeError(DigitflowError):
    code = "payload_too_large"
    status = 413


class NoInkError(InvalidImageError):
    """The image decodes but holds nothing that looks like a drawn mark (a blank page)."""

    code = "no_ink"
    status = 422


class IdempotencyConflictError(DigitflowError):
    """An Idempotency-Key sent again with a different request body."""

    code = "idempotency_key_reused"
    status = 422


class JobNotFoundError(DigitflowError):
    code = "job_not_found"
    status = 404


class InputGoneError(DigitflowError):
    """Feedback for a job whose input is not in the prediction log (failed, unfinished, pruned)."""

    code = "input_gone"
    status = 409


class ModelNotFoundError(DigitflowError):
    code = "model_not_found"
    status = 404


class ModelVersionNotFoundError(ModelNotFoundError):
    """The model exists, but not that version."""

    code = "model_version_not_found"


class ModelVersionInvalidError(DigitflowError):
    """A registered version's artifacts are missing or corrupt (checked before any worker sees it)."""

    code = "model_version_invalid"
    status = 409
    public_message = "the model version's files are missing or corrupt"


class DeployFailedError(DigitflowError):
    """An inference process could not load the promoted version; the alias was moved back."""

    code = "deploy_failed"
    status = 409


class DeployTimeoutError(DigitflowError):
    """Not every live inference process confirmed the new version in time (the alias stays)."""

    code = "deploy_timeout"
    status = 504


class NoPreviousVersionError(DigitflowError):
    """A rollback with no earlier production version to go back to."""

    code = "no_previous_version"
    status = 409


class VersionNotServableError(DigitflowError):
    """A job pinned a version an admin did not mark servable (only production, the candidate and
    the model's ``servable`` set may be pinned: a client cannot make workers load any version)."""

    code = "version_not_servable"
    status = 403


class NoCandidateError(DigitflowError):
    """A canary action (promote, abort) on a model that has no candidate in release."""

    code = "no_candidate"
    status = 409


class UnsupportedProfileError(DigitflowError):
    """A job names an input profile no preprocessing step implements."""

    code = "unsupported_profile"
    status = 422


class UnauthorizedError(DigitflowError):
    code = "unauthorized"
    status = 401


class ForbiddenError(DigitflowError):
    code = "forbidden"
    status = 403


class AdminDisabledError(ForbiddenError):
    """Write actions on models need ADMIN_TOKEN, and none is configured."""

    code = "admin_disabled"


class ModelUnavailableError(DigitflowError):
    """The model exists but cannot be loaded by this worker (corrupt or missing weights)."""

    code = "model_unavailable"
    status = 503
    public_message = "the model cannot be loaded right now"


class InferenceFailedError(DigitflowError):
    code = "inference_failed"
    status = 500
    public_message = "inference failed"


class PoisonJobError(DigitflowError):
    """The job's input crashed its stage's worker process every time it ran, alone."""

    code = "poison"
    status = 422


class DeadlineExceededError(DigitflowError):
    """The job did not finish within JOB_DEADLINE_S (its message was lost or a stage stayed down)."""

    code = "deadline_exceeded"
    status = 504


class StageTimeoutError(DigitflowError):
    """The job's batch ran past its stage's time limit and the job was not finished; it is not
    blamed for it (no strike), and the client may resubmit it."""

    code = "stage_timeout"
    status = 504


class InvalidMessageError(DigitflowError):
    """A stage received a message that does not match the schema it speaks."""

    code = "invalid_message"
    status = 500
    public_message = "a stage received a malformed message"


class ServiceUnavailableError(DigitflowError):
    """A dependency (Redis) is unreachable; clients should retry later."""

    code = "service_unavailable"
    status = 503

    def __init__(self, message: str, retry_after: int = 2, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class StoreUnavailableError(ServiceUnavailableError):
    """The job store refused a write while a stage ran the job (Redis out of memory, or gone):
    the job is failed at once rather than left unfinished; resubmitting later may succeed."""

    code = "store_unavailable"


class OverloadedError(ServiceUnavailableError):
    code = "overloaded"
    status = 429


class ModelLoadingError(ServiceUnavailableError):
    """A pinned version is not loaded in this worker yet: it is being loaded in the background
    (never on a job's path); retry after ``retry_after`` seconds."""

    code = "model_loading"


class RegistryUnavailableError(ServiceUnavailableError):
    """No registry service is alive, or it did not answer in time."""

    code = "registry_unavailable"


class ConfigurationError(DigitflowError):
    """Settings failed validation at start-up."""

    code = "configuration_error"
    public_message = "the service is misconfigured"


def error_from_dict(body: dict[str, Any]) -> DigitflowError:
    """Rebuild an error sent as ``to_dict()`` (e.g. by the registry service through Redis)."""
    by_code: dict[str, type[DigitflowError]] = {}
    stack: list[type[DigitflowError]] = [DigitflowError]
    while stack:
        cls = stack.pop()
        by_code.setdefault(cls.code, cls)
        stack.extend(cls.__subclasses__())
    cls = by_code.get(str(body.get("code")), DigitflowError)
    details = body.get("details") or {}
    message = str(body.get("message", "error"))
    if issubclass(cls, ServiceUnavailableError):
        return cls(message, **{k: v for k, v in details.items() if k != "retry_after"})
    return cls(message, **details)
