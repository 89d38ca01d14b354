"""Errors meant for the user: the CLI prints their message (no traceback) and exits non-zero."""


class UserError(Exception):
    """Something the user can fix: bad input, a wrong flag, a missing package.

    The message says what is wrong and what to do about it.
    """


class MissingDependency(UserError):
    """An optional package is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, what: str = ""):
        hint = f"pip install 'coworld[{extra}]'"
        super().__init__(
            f"{what or package} needs the optional package '{package}', which is not installed. "
            f"Install it with: {hint}"
        )
        self.package = package
        self.extra = extra


class TrainingDiverged(UserError):
    """A loss, a parameter or the policy's output became NaN/inf; the run stopped before saving it."""


class DiskFull(UserError):
    """Writing a run file failed for lack of space; the temporary file was removed."""
