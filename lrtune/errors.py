"""The one exception type the CLI turns into a one-line message and an exit code."""


class LRTuneError(Exception):
    """A problem the user can fix: bad input, a missing file, an unknown name.

    The message is one line that names the culprit.
    """
