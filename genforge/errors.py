"""The one exception type that means "the user's input was wrong", not "genforge has a bug".

Every `GenforgeError` carries one sentence that names what was wrong and how to fix it; the CLI prints
it without a traceback and exits non-zero. Anything else that escapes is our bug and should raise.
"""


class GenforgeError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""
