"""The exceptions bgeort raises. Every message says what happened, why, and the fix."""


class BgeortError(Exception):
    """Base class of every error bgeort raises on purpose."""


class ModelFolderError(BgeortError):
    """A model folder is missing, incomplete, corrupt, or from an unsupported format version."""


class DeviceError(BgeortError):
    """The requested device or execution provider cannot be used."""


class MissingDependencyError(BgeortError, ImportError):
    """An optional dependency is not installed; the message has the pip line that installs it."""


class TruncationWarning(UserWarning):
    """Some inputs were longer than the model's max length and were cut to it."""


class QueueFullError(BgeortError):
    """An async model's queue holds its maximum of texts; retry after `retry_after` seconds
    (`bgeort serve` answers 429 with a Retry-After header)."""

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after
