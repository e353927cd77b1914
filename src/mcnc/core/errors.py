"""Exceptions shared across mcnc."""


class FormatError(ValueError):
    """The file is not a valid .mcnc file, or does not fit the model it is loaded into."""


class DivergedError(FloatingPointError, ValueError):
    """The training loss became NaN or infinite, so training stopped before writing anything
    spoilt. A ``ValueError`` too, so the command line reports it as a message (exit code 2)."""
