from __future__ import annotations

import pytest

from torchslim.artifacts.semver import Ref, Version, check_alias, parse_ref
from torchslim.errors import ConfigError


def test_precedence_follows_semver() -> None:
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
               "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2.0",
               "1.10.0", "2.0.0"]
    shuffled = ordered[::-1][3:] + ordered[::-1][:3]
    assert sorted(shuffled, key=lambda v: Version.parse(v).key()) == ordered
    assert [str(Version.parse(v)) for v in ordered] == ordered


@pytest.mark.parametrize("part,expected", [("major", "2.0.0"), ("minor", "1.5.0"),
                                           ("patch", "1.4.3")])
def test_bump(part: str, expected: str) -> None:
    assert str(Version.parse("1.4.2").bump(part)) == expected
    assert str(Version.parse("1.4.2-rc.1").bump(part)) == expected


@pytest.mark.parametrize("text", ["1.0", "v1.0.0", "01.0.0", "1.0.0+build.5", "1.0.0-", "a.b.c"])
def test_invalid_versions_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="SemVer"):
        Version.parse(text)


def test_unknown_bump() -> None:
    with pytest.raises(ConfigError, match="major, minor, patch"):
        Version(1, 0, 0).bump("huge")


def test_refs() -> None:
    assert parse_ref("m") == Ref("m")
    assert parse_ref("m@latest") == Ref("m")
    assert parse_ref("m@1.2.0") == Ref("m", version=Version(1, 2, 0))
    assert parse_ref("m@champion") == Ref("m", alias="champion")
    assert str(parse_ref("m@2.0.0-rc.1")) == "m@2.0.0-rc.1"
    for bad in ("m@", "@1.0.0", "m n", "m@1.x"):
        with pytest.raises(ConfigError):
            parse_ref(bad)
    with pytest.raises(ConfigError, match="reserved"):
        check_alias("latest")
