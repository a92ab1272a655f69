"""User-facing errors: one clear message, exit code 2, nothing overwritten."""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input from the user (file, config, name). The CLI prints it and exits with code 2.

    The message should say where (file, line or record) and what was expected.
    """

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f":{line}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line


class RunFailed(Exception):
    """A run stopped for a reason that is not bad input (diverged, disk full): the CLI prints one
    `error: ...` line and exits with `exit_code`. Not a UserInputError: a sweep marks that cell failed
    and goes on."""

    exit_code = 1


class TrainingDiverged(RunFailed):
    """A non-finite loss, gradient norm or weight: training stopped and nothing non-finite was saved."""

    exit_code = 3


class DiskFull(RunFailed):
    """No space left while writing a run file; the partial file was removed, older files are intact."""

    exit_code = 4
