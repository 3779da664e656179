"""Errors caused by the user's input, reported by the CLI as one line that names the fix."""


class UserError(Exception):
    """An error caused by the user's input; the CLI prints its message as one line.

    The message must say what is wrong and how to fix it.
    """
