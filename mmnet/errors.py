"""The project's error type: anything a user can fix (a file, a setting, an input) raises it."""


class MMNetError(Exception):
    """An error with a message meant for the user; the command line prints it without a traceback."""
