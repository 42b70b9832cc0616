"""SemVer 2.0 versions (``1.4.2``, ``2.0.0-rc.1``) and registry references.

A reference names one version: ``name`` (the latest), ``name@1.2.0`` (that version) or
``name@champion`` (whatever the alias points at). Build metadata (``+build``) is refused:
SemVer gives two versions that differ only there the same precedence, which would make
"latest" ambiguous.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torchslim.errors import ConfigError

__all__ = ["Version", "Ref", "parse_ref", "check_name", "check_alias", "BUMPS", "LATEST"]

BUMPS = ("major", "minor", "patch")
LATEST = "latest"  # ``name@latest`` is the same as ``name``
_NUM = r"(0|[1-9]\d*)"
_ID = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
_VERSION = re.compile(rf"{_NUM}\.{_NUM}\.{_NUM}(?:-({_ID}(?:\.{_ID})*))?")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Version:
        m = _VERSION.fullmatch(text.strip())
        if m is None:
            hint = "; build metadata (+...) is not accepted" if "+" in text else ""
            raise ConfigError(f"version {text!r} is not a SemVer version such as 1.2.0 or "
                              f"2.0.0-rc.1{hint}")
        pre = tuple(m.group(4).split(".")) if m.group(4) else ()
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre)

    def bump(self, part: str) -> Version:
        """The next ``part`` version (a prerelease is dropped: 1.2.0-rc.1 -> 1.2.1)."""
        if part == "major":
            return Version(self.major + 1, 0, 0)
        if part == "minor":
            return Version(self.major, self.minor + 1, 0)
        if part == "patch":
            return Version(self.major, self.minor, self.patch + 1)
        raise ConfigError(f"bump {part!r} must be one of {', '.join(BUMPS)}")

    def key(self) -> tuple:
        """Sort key with SemVer precedence: a prerelease sorts before its release;
        numeric identifiers compare as numbers, below alphanumeric ones."""
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if pre else 1, pre)

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return core + ("-" + ".".join(self.prerelease) if self.prerelease else "")


@dataclass(frozen=True)
class Ref:
    """A parsed reference: ``version`` or ``alias`` (neither: the latest version)."""

    name: str
    version: Version | None = None
    alias: str | None = None

    def __str__(self) -> str:
        tail = str(self.version) if self.version else self.alias
        return f"{self.name}@{tail}" if tail else self.name


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"model name {name!r} must start with a letter or digit and hold "
                          "only letters, digits, '.', '_' and '-' (at most 128)")
    return name


def check_alias(alias: str) -> str:
    if not _ALIAS.fullmatch(alias) or alias == LATEST:
        raise ConfigError(f"alias {alias!r} must start with a letter and hold only letters, "
                          "digits, '.', '_' and '-' (at most 64); 'latest' is reserved")
    return alias


def parse_ref(text: str) -> Ref:
    """``name``, ``name@VERSION`` or ``name@ALIAS`` (ConfigError for anything else)."""
    name, sep, tail = text.strip().partition("@")
    check_name(name)
    if not sep or tail == LATEST:
        return Ref(name)
    if not tail:
        raise ConfigError(f"reference {text!r} ends in '@'; write NAME@VERSION or NAME@ALIAS")
    if tail[0].isdigit():
        return Ref(name, version=Version.parse(tail))
    return Ref(name, alias=check_alias(tail))
