"""Errors a person can act on: each names the problem and the remedy."""


class CxrError(Exception):
    """Base class: the message is meant for the user, as it is."""


class UnknownModelError(CxrError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class CheckpointUnavailableError(CxrError):
    """Weights could not be loaded: offline, gated, or a bad local directory."""


class ExportError(CxrError):
    """The exported graph disagrees with the registry, or export itself failed."""
