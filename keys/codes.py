"""Agency electronic identification codes (Decision 20/2020/QĐ-TTg).

The form is ``LLL.kk.jj.Xnn``: the rightmost segment is the level-1 unit
(``G`` central bodies, ``H`` provinces, ...), then level 2, 3 and 4 to the
left; all-zero segments are levels not used. ``000.00.12.H41`` is a level-2
unit (``12``) under province ``H41``.

Parsing lives here only, so that another code form can be added later by
adding a parser to :data:`_FORMS`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from keys.errors import UsageError

# ASCII only and fullmatch: "\d" would accept other scripts' digits, "$" a trailing newline.
_DECISION_20_2020 = re.compile(r"(\d{3})\.(\d{2})\.(\d{2})\.([A-Z]\d{2})", re.ASCII)
MAX_CODE_LENGTH = 32


class InvalidAgencyCode(UsageError):
    """A string is not an agency code of any known form."""


@dataclass(frozen=True, order=True)
class AgencyCode:
    """A validated agency code. Construct with :meth:`parse`."""

    text: str
    # Segments from level 1 (leftmost here) to level 4; "00"/"000" = unused.
    levels: tuple[str, str, str, str]

    @classmethod
    def parse(cls, text: str) -> AgencyCode:
        """Parse ``text`` or raise :class:`InvalidAgencyCode` naming the expected form."""
        if not isinstance(text, str) or len(text) > MAX_CODE_LENGTH:
            raise InvalidAgencyCode("agency code must be a short string like 000.00.00.H41")
        for form in _FORMS:
            parsed = form(text)
            if parsed is not None:
                return parsed
        raise InvalidAgencyCode(
            f"invalid agency code {text!r}: expected LLL.kk.jj.Xnn, e.g. 000.00.00.H41"
        )

    @classmethod
    def from_user(cls, text: str) -> AgencyCode:
        """A code as a person types it: surrounding spaces and a lower-case letter forgiven
        (``000.01.12.h41``). For input only: what travels signed is parsed strictly."""
        if not isinstance(text, str) or len(text) > MAX_CODE_LENGTH * 2:
            raise InvalidAgencyCode("agency code must be a short string like 000.00.00.H41")
        try:
            return cls.parse(text.strip().upper())
        except InvalidAgencyCode:
            raise InvalidAgencyCode(
                f"invalid agency code {text!r}: expected LLL.kk.jj.Xnn, e.g. 000.00.00.H41"
            ) from None

    @property
    def level1(self) -> str:
        """The level-1 unit, e.g. ``H41``."""
        return self.levels[0]

    @property
    def depth(self) -> int:
        """How many levels are used: 1 for ``000.00.00.H41``, 2 for ``000.00.12.H41``."""
        depth = 1
        for i, seg in enumerate(self.levels[1:], start=2):
            if int(seg) != 0:
                depth = i
        return depth

    @property
    def parent(self) -> AgencyCode | None:
        """The code one level up (``000.00.12.H41`` -> ``000.00.00.H41``); None at level 1."""
        depth = self.depth
        if depth == 1:
            return None
        levels = list(self.levels)
        levels[depth - 1] = "0" * len(levels[depth - 1])
        return _from_levels(levels[0], levels[1], levels[2], levels[3])

    def is_under(self, ancestor: AgencyCode) -> bool:
        """True if ``ancestor`` is this code or one of its parents."""
        node: AgencyCode | None = self
        while node is not None:
            if node == ancestor:
                return True
            node = node.parent
        return False

    @property
    def queue_name(self) -> str:
        """The RabbitMQ inbox queue for this agency."""
        return f"cp.inbox.{self.text}"

    def __str__(self) -> str:
        return self.text


def _from_levels(l1: str, l2: str, l3: str, l4: str) -> AgencyCode:
    return AgencyCode(text=f"{l4}.{l3}.{l2}.{l1}", levels=(l1, l2, l3, l4))


def _parse_decision_20_2020(text: str) -> AgencyCode | None:
    m = _DECISION_20_2020.fullmatch(text)
    if m is None:
        return None
    l4, l3, l2, l1 = m.groups()
    return _from_levels(l1, l2, l3, l4)


_FORMS: tuple[Callable[[str], AgencyCode | None], ...] = (_parse_decision_20_2020,)
