"""Errors a user can cause and fix: the CLI prints these as one line, never a traceback."""

from __future__ import annotations


class GraphoptError(Exception):
    """A user-facing error: bad input, bad option, missing tool. The message says what to do."""

    exit_code = 2


class ModelLoadError(GraphoptError):
    """The model file is missing, unreadable, or not a valid ONNX model."""


class UnsupportedOperatorError(GraphoptError):
    """The model uses operators graphopt cannot import; the message names every one."""


class DynamicShapeError(GraphoptError):
    """An input has a dynamic dimension and no --input-shape was given for it."""


class SymbolicShapeError(GraphoptError):
    """A feature that needs static input shapes was asked for with symbolic (range) dims."""


class PipelineError(GraphoptError):
    """Unknown pass, unknown option, or malformed pipeline text."""


class TargetError(GraphoptError):
    """Unknown target, bad target option, or a missing toolchain for it."""


class InputError(GraphoptError):
    """Wrong input name, shape or dtype given to a compiled artifact."""


class ArtifactError(GraphoptError):
    """An artifact directory is missing, incomplete, or cannot be written."""


class VerificationError(GraphoptError):
    """A pass changed the numbers beyond tolerance (--verify-each)."""

    exit_code = 3


class PassFailure(RuntimeError):
    """A pass raised (a compiler bug, not a user error): names it and the passes before it."""
