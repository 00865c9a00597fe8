"""The one exception type the converter raises for bad input; the CLI prints it as one line."""


class ConvertError(Exception):
    """A user-facing failure: unknown architecture, missing shard, corrupt file, low disk..."""
