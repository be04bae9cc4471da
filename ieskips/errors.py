"""The one exception type for mistakes a user can make (bad config, unknown name, missing data)."""


class ConfigError(ValueError):
    """A user-fixable error. The message says what is wrong and how to fix it, on one line.

    The CLI turns it into one line on stderr and exit code 2, before anything is started.
    """


def check_choice(kind: str, value, choices) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``, naming the valid ones."""
    if value not in choices:
        valid = ", ".join(repr(c) for c in sorted(choices, key=str))
        raise ConfigError(f"unknown {kind} {value!r}; choose one of: {valid}")


def check_range(name: str, value, low=None, high=None, *, low_open: bool = False) -> None:
    """Raise ConfigError unless ``low <= value <= high`` (``low < value`` when ``low_open``)."""
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"<= {high}"
        bounds = " and ".join(b for b in (lo, hi) if b)
        raise ConfigError(f"{name} must be {bounds}, got {value!r}")
