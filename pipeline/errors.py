"""The project's exceptions: one base class and one subclass per kind of input.

Every message is one line that names the file (or key) at fault and says what to do about it.
The CLI turns these into a one-line error and exit status 2; per-slide stages turn a
:class:`SlideError` into a ``failed`` status with that reason instead of crashing the cohort.
"""


class TriageError(Exception):
    """Base class for errors caused by the user's input rather than by a bug."""


class ConfigError(TriageError):
    """The config file or the sample sheet is invalid."""


class SlideError(TriageError):
    """A slide cannot be used: unreadable, out of scope (fluorescence), no MPP, no tissue..."""


class ModelError(TriageError):
    """A model card or its weights are invalid (unknown architecture, checksum mismatch...)."""
