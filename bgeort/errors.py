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
