"""The one exception type that the command line turns into a single clear line.

Raise :class:`InputError` for anything the user can fix (a bad file, a bad option).
Its message names the file or option and says what to change; the CLI prints it
without a traceback and exits with status 2.
"""


class InputError(ValueError):
    """Bad user input: the message names the file or option and the fix."""
