"""One exception family; each class carries the process exit code the CLI maps it to.

Exit codes (documented in the README):
    0  success
    1  a budget or gate was not met
    2  usage or input error (bad flag, missing/unsupported file)
    3  verification failed (ONNX parity, checker)
    4  runtime or export error
"""

from __future__ import annotations


class PruneCliError(Exception):
    """Base class. The message is one line that names the flag or file and the fix."""

    exit_code = 4


class UsageError(PruneCliError):
    """Bad flag value or unusable input file (exit 2)."""

    exit_code = 2


class BudgetNotMet(PruneCliError):
    """A budget or CI gate was not met (exit 1)."""

    exit_code = 1


class VerificationFailed(PruneCliError):
    """An exported model does not match PyTorch, or fails the ONNX checker (exit 3)."""

    exit_code = 3


class RuntimeFailure(PruneCliError):
    """Tracing, pruning, export or runtime failure that is not the user's input (exit 4)."""

    exit_code = 4
