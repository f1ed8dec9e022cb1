"""Label selectors: the string form parsed and matched against labels."""

import pytest

from fluidfed.models import LabelSelector, SelectorRequirement
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


def test_parse_builds_the_selector_kubectl_means() -> None:
    sel = selectors.parse("env=prod, tier in (a, b),gpu,!legacy,zone!=z1")
    assert sel.match_labels == {"env": "prod"}
    assert [(r.key, r.operator, r.values) for r in sel.match_expressions] == [
        ("tier", "In", ["a", "b"]),
        ("gpu", "Exists", []),
        ("legacy", "DoesNotExist", []),
        ("zone", "NotIn", ["z1"]),
    ]
    assert selectors.parse("env==prod").match_labels == {"env": "prod"}
    assert selectors.parse("") == LabelSelector()


def test_values_must_be_in_parentheses() -> None:
    with pytest.raises(ValueError, match=r"values must be in parentheses"):
        selectors.parse("env in prod")


def test_an_empty_selector_matches_everything_and_requirements_are_anded() -> None:
    assert selectors.matches(LabelSelector(), {})
    sel = LabelSelector(
        match_labels={"env": "prod"},
        match_expressions=[SelectorRequirement(key="tier", operator="NotIn", values=["cold"])],
    )
    assert selectors.matches(sel, {"env": "prod"})  # NotIn holds where the label is absent
    assert not selectors.matches(sel, {"env": "prod", "tier": "cold"})
    assert not selectors.matches(sel, {"env": "dev"})
