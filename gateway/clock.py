"""The gateway's clock, in one place: every part of the service reads the time here, so a
test moves it for all of them at once (``monkeypatch.setattr(clock, "now", ...)``)."""

from __future__ import annotations

import datetime as dt


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
