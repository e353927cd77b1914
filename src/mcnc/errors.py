"""Exceptions shared across mcnc."""


class FormatError(ValueError):
    """The file is not a valid .mcnc file, or does not fit the model it is loaded into."""
