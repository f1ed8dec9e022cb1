"""The SDK's replicas: several hub URLs, one scheme, one in use at a time."""

import pytest

from fluidfed import Client
from fluidfed.errors import ConfigError


def test_several_hub_urls_as_a_list_or_separated_by_commas() -> None:
    by_commas = Client("http://a:8470/, http://b:8470", "t")
    assert by_commas.urls == ["http://a:8470", "http://b:8470"]
    assert by_commas.url == "http://a:8470"
    assert Client(["http://a:8470", "http://b:8470"], "t").urls == by_commas.urls
    assert Client("http://a:8470", "t").urls == ["http://a:8470"]


def test_hub_urls_that_mix_schemes_or_name_none_are_refused() -> None:
    with pytest.raises(ConfigError, match="mix http and https"):
        Client("http://a:8470,https://b:8470", "t")
    with pytest.raises(ConfigError, match="no hub URL"):
        Client(" , ", "t")
