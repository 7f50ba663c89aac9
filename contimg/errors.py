"""Error kinds that decide what the queue does with a failure.

A :class:`PermanentError` is a fact about the data or the configuration (a
truncated file, a missing subband, a bad path): retrying cannot help, so the
task records it and returns a structured failure. A :class:`TransientError`
(a disk briefly full, a lock held, a broker hiccup) is retried with backoff.
Messages name the thing and say what to do.
"""


class ContimgError(Exception):
    """Base of contimg's own errors."""


class PermanentError(ContimgError):
    """Retrying cannot help: record the reason and go on."""


class TransientError(ContimgError):
    """Retrying may help: the task retries with backoff."""


class ConfigError(ContimgError, ValueError):
    """A malformed or inconsistent configuration; the message names the key."""


class BadSubbandFile(PermanentError):
    """A subband file that cannot be read (truncated, not UVH5, wrong shape)."""
