"""Errors a user can fix. The CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input or environment: the message says what is wrong and what to do."""
