"""Cron schedules as Fluid's DataLoad takes them (`--schedule "0 */6 * * *"`): five fields
(minute, hour, day of month, month, day of week) of numbers, `*`, ranges `a-b`, steps
`/n` and lists, or @hourly, @daily, @weekly, @monthly; times in UTC. Pure.

Like cron, a day of month and a day of week both given (neither `*`) mean either.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass

# day of week 0-6 (0 = Sunday), as Kubernetes' CronJob (robfig/cron), which runs Fluid's
# Cron DataLoad, takes it: a 7 the hub accepted would fail in the cluster
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 6))  # fmt: skip
_DESCRIPTORS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
}
_HORIZON_DAYS = 366 * 5  # a schedule that never fires (Feb 30) is refused, not looped on


@dataclass(frozen=True, slots=True)
class Schedule:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day of month was `*`
    any_weekday: bool

    def _day_matches(self, d: dt.date) -> bool:
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow

    def next_after(self, t: float) -> float:
        """The first time the schedule fires strictly after unix time `t`."""
        start = dt.datetime.fromtimestamp(t, dt.UTC).replace(second=0, microsecond=0)
        start += dt.timedelta(minutes=1)
        day = start.date()
        for _ in range(_HORIZON_DAYS):
            if day.month in self.months and self._day_matches(day):
                first = start.hour * 60 + start.minute if day == start.date() else 0
                for h in sorted(self.hours):
                    for m in sorted(self.minutes):
                        if h * 60 + m >= first:
                            when = dt.datetime(day.year, day.month, day.day, h, m, tzinfo=dt.UTC)
                            return when.timestamp()
            day += dt.timedelta(days=1)
        raise ValueError("the schedule never fires")


def _number(text: str) -> int:
    """ASCII digits only, as the cron parsers of Kubernetes and Fluid read them (Python's
    int() also takes '1_0', ' 3' and other scripts' digits, which they refuse)."""
    if not _DIGITS.fullmatch(text):
        raise ValueError(text)
    return int(text)


_DIGITS = re.compile(r"[0-9]+")


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        rng, slash, step_text = part.partition("/")
        try:
            step = _number(step_text) if slash else 1
            if rng == "*":
                a, b = low, high
            elif "-" in rng:
                a_text, b_text = rng.split("-", 1)
                a, b = _number(a_text), _number(b_text)
            else:
                a = _number(rng)
                b = high if slash else a
        except ValueError:
            raise ValueError(
                f"{name} {part!r} is not a number, '*', a range a-b or a step /n"
            ) from None
        if step < 1 or not low <= a <= b <= high:
            sunday = " (0 is Sunday)" if name == "day of week" else ""
            raise ValueError(f"{name} {part!r} is out of range {low}-{high}{sunday}")
        out.update(range(a, b + 1, step))
    return frozenset(out)


def parse(expr: str) -> Schedule:
    """A schedule, or ValueError saying which field is wrong."""
    text = _DESCRIPTORS.get(expr.strip(), expr.strip())
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(
            f"{expr!r} has {len(fields)} fields; a schedule has 5: minute hour day-of-month "
            'month day-of-week (e.g. "0 */6 * * *": every 6 hours)'
        )
    sets = [_field(f, *spec) for f, spec in zip(fields, _FIELDS, strict=True)]
    s = Schedule(sets[0], sets[1], sets[2], sets[3], sets[4], fields[2] == "*", fields[4] == "*")
    # with both days restricted cron fires on either (0 0 30 2 1: Mondays in February)
    only_days = s.any_weekday or s.any_day
    if only_days and not any(
        d <= calendar.monthrange(2024, m)[1] for m in s.months for d in s.days
    ):
        raise ValueError(f"{expr!r} never fires: no month has those days")
    return s
