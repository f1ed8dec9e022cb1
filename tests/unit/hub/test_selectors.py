"""Label selectors: the string form parsed and matched against labels."""

import pytest

from hub import selectors


@pytest.mark.parametrize(
    ("text", "labels", "match"),
    [
        ("env=prod", {"env": "prod"}, True),
        ("env=prod,gpu", {"env": "prod"}, False),
        ("env in (prod, dev),!legacy", {"env": "dev"}, True),
        ("env notin (prod)", {}, True),
        ("env!=prod", {"env": "prod"}, False),
    ],
)
def test_selector_strings(text: str, labels: dict[str, str], match: bool) -> None:
    assert selectors.matches(selectors.parse(text), labels) is match
