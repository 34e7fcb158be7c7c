"""The one exception every data gate raises, so runners can tell a stopped run from a bug."""


class DataGateError(RuntimeError):
    """The data failed a gate; the message names the gate's findings and what to do."""
