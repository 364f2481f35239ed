"""If-None-Match matching as RFC 9110 §13.1.2 specifies it."""

from __future__ import annotations

import pytest

from mdp.caching import none_match

TAG = '"5d41402abc4b2a76"'


@pytest.mark.parametrize(
    "header",
    [TAG, f"W/{TAG}", f'"a", {TAG}', f'W/"x,y",{TAG}', f"  {TAG}  ", "*", " * "],
)
def test_matches(header: str):
    assert none_match(header, TAG)


@pytest.mark.parametrize(
    "header",
    ['"5d41402abc4b2a7"', "5d41402abc4b2a76", '"*"', "", "W/", f'"a {TAG[1:]}'],
)
def test_does_not_match(header: str):
    assert not none_match(header, TAG)
