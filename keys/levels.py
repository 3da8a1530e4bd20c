"""Classification levels and urgency, with the Vietnamese display names.

Slugs are the ASCII forms used in code, files and on the wire; display names
are the domain's own words.
"""

from __future__ import annotations

import re
import unicodedata
from enum import Enum

from keys.errors import UsageError


def _slug(text: str) -> str:
    """``Tối mật`` -> ``toi-mat``: diacritics dropped (đ -> d), lower case, words joined by -."""
    if not isinstance(text, str) or len(text) > 64:
        raise ValueError("not a level or urgency name")
    folded = unicodedata.normalize("NFKD", text.strip().casefold().replace("đ", "d"))
    ascii_ = "".join(c for c in folded if not unicodedata.combining(c))
    return re.sub(r"[\s_-]+", "-", ascii_).strip("-")


class Level(Enum):
    """State-secret level of a document, ordered from least to most secret."""

    THUONG = "thuong"
    MAT = "mat"
    TOI_MAT = "toi-mat"
    TUYET_MAT = "tuyet-mat"

    @classmethod
    def parse(cls, slug: str | Level) -> Level:
        """A level from its slug or its Vietnamese name, as people type it (``mat``, ``Mật``,
        ``Tối mật``, ``TOI_MAT``); :class:`UsageError` listing the valid ones otherwise."""
        if isinstance(slug, Level):
            return slug
        try:
            return cls(_slug(slug))
        except (ValueError, TypeError):
            valid = ", ".join(f"{level.value} ({level.display})" for level in cls)
            raise UsageError(f"unknown level {slug!r}: expected one of {valid}") from None

    @property
    def rank(self) -> int:
        """0 for thuong ... 3 for tuyet-mat."""
        return _LEVEL_ORDER.index(self)

    @property
    def display(self) -> str:
        """The Vietnamese name."""
        return _LEVEL_DISPLAY[self]

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Level):
            return NotImplemented
        return self.rank <= other.rank

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Level):
            return NotImplemented
        return self.rank < other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Level):
            return NotImplemented
        return self.rank >= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Level):
            return NotImplemented
        return self.rank > other.rank


_LEVEL_ORDER = (Level.THUONG, Level.MAT, Level.TOI_MAT, Level.TUYET_MAT)
_LEVEL_DISPLAY = {
    Level.THUONG: "Thường",
    Level.MAT: "Mật",
    Level.TOI_MAT: "Tối mật",
    Level.TUYET_MAT: "Tuyệt mật",
}


class Urgency(Enum):
    """Urgency (độ khẩn) of a document."""

    THUONG = "thuong"
    KHAN = "khan"
    THUONG_KHAN = "thuong-khan"
    HOA_TOC = "hoa-toc"
    HOA_TOC_HEN_GIO = "hoa-toc-hen-gio"

    @classmethod
    def parse(cls, slug: str | Urgency) -> Urgency:
        """An urgency from its slug or its Vietnamese name (``hoa-toc``, ``Hỏa tốc``)."""
        if isinstance(slug, Urgency):
            return slug
        try:
            return cls(_slug(slug))
        except (ValueError, TypeError):
            valid = ", ".join(f"{u.value} ({u.display})" for u in cls)
            raise UsageError(f"unknown urgency {slug!r}: expected one of {valid}") from None

    @property
    def display(self) -> str:
        """The Vietnamese name."""
        return _URGENCY_DISPLAY[self]


_URGENCY_DISPLAY = {
    Urgency.THUONG: "Thường",
    Urgency.KHAN: "Khẩn",
    Urgency.THUONG_KHAN: "Thượng khẩn",
    Urgency.HOA_TOC: "Hỏa tốc",
    Urgency.HOA_TOC_HEN_GIO: "Hỏa tốc hẹn giờ",
}
