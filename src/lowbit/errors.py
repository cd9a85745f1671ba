"""The one exception type for bad input: the CLI prints its message as one line and exits 2."""


class ConfigError(ValueError):
    """The user asked for something lowbit cannot do; the message says what and what is allowed."""
