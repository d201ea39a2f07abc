"""Path rules and permission strings, as C xenstored applies them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.xenstore import paths
from orchestrator.xenstore.errors import InvalidRequestError
from orchestrator.xenstore.perms import Access, Perm, access_for, parse_perms

VALID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_@"
components = st.text(st.sampled_from(VALID_CHARS), min_size=1, max_size=10)


# A leading '@' marks a special watch path, never a relative node name.
relative_paths = st.lists(components, min_size=1, max_size=8).map("/".join).filter(
    lambda p: not p.startswith("@")
)


@given(relative_paths, st.integers(0, 0x7FEF))
def test_relative_paths_resolve_to_valid_absolute_paths(rel: str, domid: int) -> None:
    assert paths.validate_path(rel) == rel
    absolute = paths.canonicalize(rel, domid)
    assert absolute == f"/local/domain/{domid}/{rel}"
    assert paths.is_valid_absolute(absolute)
    assert paths.relative_to(absolute, paths.domain_path(domid)) == rel


@given(st.lists(components, max_size=8))
def test_absolute_paths_of_valid_components_are_valid(parts: list[str]) -> None:
    path = "/" + "/".join(parts)
    assert paths.validate_path(path) == path
    assert list(paths.ancestors_and_self(path))[-1] == path
    for ancestor in paths.ancestors_and_self(path):
        assert paths.is_descendant_or_self(path, ancestor)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("", id="empty"),
        pytest.param("/a/", id="trailing-slash"),
        pytest.param("a/", id="relative-trailing-slash"),
        pytest.param("/a//b", id="double-slash"),
        pytest.param("/a b", id="space"),
        pytest.param("/a.b", id="dot"),
        pytest.param("/é", id="non-ascii"),
        pytest.param("/a\0b", id="nul"),
        pytest.param("@introduceDomain", id="special-outside-watch"),
        pytest.param("@a/b", id="relative-starting-with-at"),
    ],
)
def test_invalid_paths_are_rejected_with_a_reason(path: str) -> None:
    with pytest.raises(InvalidRequestError, match="invalid"):
        paths.validate_path(path)


def test_special_paths_only_where_allowed() -> None:
    assert paths.validate_path("@releaseDomain", allow_special=True) == "@releaseDomain"
    assert paths.canonicalize("@releaseDomain", 5) == "@releaseDomain"
    with pytest.raises(InvalidRequestError):
        paths.validate_path("@", allow_special=True)


def test_length_limits_match_xenstored() -> None:
    # XENSTORE_REL_PATH_MAX (2048) bounds relative paths and the part of an
    # absolute path below /local/domain/<domid>/.
    assert paths.is_valid_relative("a" * paths.REL_PATH_MAX)
    assert not paths.is_valid_relative("a" * (paths.REL_PATH_MAX + 1))
    home = "/local/domain/12345/"
    assert paths.is_valid_absolute(home + "a" * paths.REL_PATH_MAX)
    assert not paths.is_valid_absolute(home + "a" * (paths.REL_PATH_MAX + 1))
    assert paths.is_valid_absolute("/" + "a" * (paths.REL_PATH_MAX - 1))
    assert not paths.is_valid_absolute("/" + "a" * paths.REL_PATH_MAX)
    assert paths.ABS_PATH_MAX == 3072


def test_path_helpers() -> None:
    assert paths.parent("/a/b") == "/a"
    assert paths.parent("/a") == "/"
    assert paths.parent("/") == "/"
    assert paths.basename("/a/b") == "b"
    assert paths.child("/", "a") == "/a"
    assert paths.child("/a", "b") == "/a/b"
    assert list(paths.ancestors_and_self("/a/b")) == ["/", "/a", "/a/b"]
    assert not paths.is_descendant_or_self("/ab", "/a")
    assert paths.is_descendant_or_self("/a/b", "/a")


# --- permissions -----------------------------------------------------------------

perm_entries = st.builds(Perm, st.sampled_from([Access.NONE, Access.READ, Access.WRITE,
                                                Access.BOTH]), st.integers(0, 0xFFFF))


@given(perm_entries)
def test_perm_strings_round_trip(perm: Perm) -> None:
    text = str(perm)
    assert text[0] in "nrwb"
    assert Perm.parse(text) == perm


@pytest.mark.parametrize("text", ["", "r", "x5", "r-1", "r5a", "R5", "r70000", " r5"])
def test_bad_perm_strings_are_rejected(text: str) -> None:
    with pytest.raises(InvalidRequestError):
        Perm.parse(text)


def test_empty_perm_list_is_rejected() -> None:
    with pytest.raises(InvalidRequestError):
        parse_perms([])


@pytest.mark.parametrize(
    ("perms", "domid", "expected"),
    [
        pytest.param("n5", 5, Access.BOTH | Access.OWNER, id="owner-has-everything"),
        pytest.param("n0", 5, Access.NONE, id="first-entry-is-the-default"),
        pytest.param("r0", 5, Access.READ, id="default-read"),
        pytest.param("n0 r5", 5, Access.READ, id="listed-domain"),
        pytest.param("n0 r5", 6, Access.NONE, id="unlisted-domain-gets-default"),
        pytest.param("b0 n5", 5, Access.NONE, id="listed-entry-beats-default"),
        pytest.param("n0 w5 r5", 5, Access.WRITE, id="first-match-wins"),
    ],
)
def test_access_rules(perms: str, domid: int, expected: Access) -> None:
    assert access_for(parse_perms(perms.split()), domid) == expected


def test_privileged_and_target_access() -> None:
    perms = parse_perms(["n7"])
    assert access_for(perms, 5, privileged=True) == Access.BOTH | Access.OWNER
    assert access_for(perms, 5, target=7) == Access.BOTH | Access.OWNER
    assert access_for(parse_perms(["n0", "r7"]), 5, target=7) == Access.READ
