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
