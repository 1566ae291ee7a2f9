"""Errors that reach the user as one line (the CLI turns them into exit code 2, no traceback)."""


class UserError(Exception):
    """Bad input from the user: a wrong path, an unknown name, a checkpoint that does not fit its config."""
