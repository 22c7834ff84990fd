"""Exceptions tfedge raises. Each message names the problem and the fix."""


class TFEdgeError(Exception):
    """Base class of tfedge's own errors."""


class UnsupportedModelError(TFEdgeError, TypeError):
    """The model's kind or one of its layers is not supported by a stage."""


class ConversionError(TFEdgeError, RuntimeError):
    """Conversion failed, or did not produce the requested kind of model."""


class InvalidModelFileError(TFEdgeError, ValueError):
    """Bytes or a file that is not a readable TFLite flatbuffer."""


class VerificationError(TFEdgeError, RuntimeError):
    """A model did not run, or did not reproduce its outputs, in a target runtime."""
