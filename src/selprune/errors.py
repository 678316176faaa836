"""One exception type for bad input: the CLI turns it into one line and exit status 2."""


class UserError(Exception):
    """Something the user gave us is wrong; the message says what and how to fix it."""
