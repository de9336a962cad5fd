"""Exceptions raised by sinkshape."""


class InputError(ValueError):
    """Invalid user input: a file, a mesh, an array or a parameter.

    The message names the offending value and what to do instead. The command
    line turns this error into one line on stderr and exit status 2.
    """
