"""The one error of data files: DataError (a ValueError) names the file and what is wrong."""


class DataError(ValueError):
    """A data file is missing, unreadable or malformed; the message names the file."""
