"""Cron schedules of Fluid's DataLoad: parsed and their next firing, in UTC."""

import datetime as dt

import pytest

from fluidfed import cron


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    ("expr", "after", "fires"),
    [
        ("0 */6 * * *", "2026-12-01T17:04:00", "2026-12-01T18:00:00"),
        ("0 */6 * * *", "2026-12-01T18:00:00", "2026-12-02T00:00:00"),
        ("*/15 * * * *", "2026-12-01T17:04:30", "2026-12-01T17:15:00"),
        ("30 2 1 * *", "2026-12-01T03:00:00", "2027-01-01T02:30:00"),
        ("0 9 * * 1-5", "2026-12-05T10:00:00", "2026-12-07T09:00:00"),  # Sat -> Mon
        ("0 0 * * 0", "2026-12-01T00:00:00", "2026-12-06T00:00:00"),  # 0 is Sunday
        ("0 0 29 2 *", "2026-03-01T00:00:00", "2028-02-29T00:00:00"),
        ("@daily", "2026-12-01T17:04:00", "2026-12-02T00:00:00"),
        ("5,10 1 * * *", "2026-12-01T01:07:00", "2026-12-01T01:10:00"),
        # both days restricted: either fires (Feb 30 never comes, Mondays in February do)
        ("0 0 30 2 1", "2027-01-01T00:00:00", "2027-02-01T00:00:00"),
    ],
)
def test_next_firing(expr: str, after: str, fires: str) -> None:
    assert cron.parse(expr).next_after(at(after)) == at(fires)


@pytest.mark.parametrize(
    ("expr", "says"),
    [
        ("0 */6 * *", "has 4 fields"),
        ("61 * * * *", "minute '61' is out of range 0-59"),
        ("0 x * * *", "hour 'x' is not a number"),
        ("*/0 * * * *", "out of range"),
        ("0 0 31 2 *", "never fires"),
        # Kubernetes' CronJob (Fluid's Cron DataLoad) refuses 7: the hub does too
        ("0 0 * * 7", r"day of week '7' is out of range 0-6 \(0 is Sunday\)"),
        ("0 0 * * 5-7", "out of range 0-6"),
        # ASCII digits only: Python's int() takes these, the Go parser behind Kubernetes'
        # CronJobs and Fluid's DataLoad refuses them
        ("1_0 * * * *", "minute '1_0' is not a number"),
        ("\u0663 \u0663 * * *", "minute '\u0663' is not a number"),
        ("*/+5 * * * *", "is not a number"),
    ],
)
def test_bad_schedules_say_which_field(expr: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        cron.parse(expr)
