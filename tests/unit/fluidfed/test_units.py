import pytest

from fluidfed.units import format_size, parse_duration, parse_size, quantity_value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GiB", 4 * 2**30),
        ("500Mi", 500 * 2**20),
        ("10GB", 10 * 10**9),
        ("1.5KiB", 1536),
        ("123", 123),
        (4096, 4096),
        ("  2 TiB ", 2 * 2**40),
    ],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "bad",
    ["lots", "4 parsecs", "-1", -5, True, "GiB", 1.5, "9" * 400, "2000000EiB", "9" * 400 + "Ti"],
)
def test_bad_sizes_say_what_is_expected(bad: object) -> None:
    # (a number past a float's range raised OverflowError: a traceback, not this message)
    with pytest.raises(ValueError, match=r"4GiB|negative|at most 1EiB"):
        parse_size(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), (12, 12), ("2d", 172800)],
)
def test_durations(text: object, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "bad", ["soon", "5 m", "m5", "", "10x", -1, float("nan"), float("inf"), "9" * 400 + "s"]
)
def test_bad_durations(bad: object) -> None:
    # (NaN passes `< 0`: under uvloop a loop's sleep(nan) raised and took the agent down)
    with pytest.raises(ValueError, match=r"30s|negative"):
        parse_duration(bad)


def test_format_size_round_trips_common_values() -> None:
    assert format_size(4 * 2**30) == "4GiB"
    assert format_size(1536) == "1.5KiB"
    assert format_size(12) == "12B"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("512Mi", 512 * 2**20),
        ("1.5Gi", 1.5 * 2**30),
        (".5Ki", 512),
        ("2G", 2e9),
        ("100m", 0.1),
        ("1e3", 1000),
        ("+7", 7),
    ],
)
def test_kubernetes_quantities(text: str, value: float) -> None:
    assert quantity_value(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["", "2gi", "Mi", "1e", "1.2.3", "-1Gi", "1 Gi"])
def test_what_is_no_kubernetes_quantity_says_so(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a Kubernetes quantity"):
        quantity_value(bad)
