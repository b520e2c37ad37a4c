"""Checks of a campaign's schedule: Airflow presets and five-field cron expressions."""

from __future__ import annotations

_CRON_PRESETS = frozenset(
    {"@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "@annually"}
)


# (low, high) of the five cron fields: minute, hour, day of month, month, day of week.
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]


def _check_cron_field(field: str, index: int) -> None:
    low, high = _CRON_RANGES[index]
    names = _CRON_NAMES[index]
    for part in field.split(","):
        body, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            raise ValueError(f"bad step {step!r}")
        if body in ("*", "?"):
            continue
        for bound in body.split("-", 1):
            value = names.get(bound.lower(), bound)
            if isinstance(value, str) and not value.isdigit():
                raise ValueError(f"bad value {bound!r}")
            if not low <= int(value) <= high:
                raise ValueError(f"{bound} is outside {low}-{high}")


def validate_schedule(value: str | None) -> str | None:
    """
    Accept None, an Airflow preset (``@daily``...) or a five-field cron expression.

    :param value: the schedule string.
    :raises ValueError: naming the offending cron field.
    """
    if value is None:
        return None
    text = value.strip()
    if text.startswith("@"):
        if text not in _CRON_PRESETS:
            raise ValueError(f"unknown schedule preset {text!r}; use one of {sorted(_CRON_PRESETS)}")
        return text
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {text!r} must have 5 fields (minute hour day month weekday)")
    labels = ("minute", "hour", "day of month", "month", "day of week")
    for index, field in enumerate(fields):
        try:
            _check_cron_field(field, index)
        except ValueError as err:
            raise ValueError(f"cron expression {text!r}: {labels[index]} field {field!r}: {err}") from None
    return text


_CRON_NAMES: tuple[dict[str, int], ...] = (
    {},
    {},
    {},
    {m: i + 1 for i, m in enumerate(_MONTHS)},
    {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
)
