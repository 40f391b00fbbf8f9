"""The one exception the CLI turns into a single-line message and a non-zero exit."""


class IfcnError(Exception):
    """Bad input or a failed stage: the message names the file and the problem."""

    def __init__(self, message: str, path: object | None = None):
        self.path = path
        super().__init__(f"{path}: {message}" if path is not None else message)
