"""The error of a wrong config key or value (the bottom of the package: everything may import it)."""


class ConfigError(ValueError):
    """A config key or value is wrong; the message names it and says what to do."""
