"""Synchronise on events, not on time: receive until what proves the step happened is in.

``client.receive(idle=...)`` returns once the inbox stayed quiet for ``idle`` seconds,
which says nothing about whether the gateway has decided yet: used as a wait it makes a
test pass or fail with the machine's load. :func:`receive_until` instead receives in
short rounds until every expected envelope id was delivered and the caller's condition
holds (a notice arrived, a status is there), with a generous deadline, and fails naming
what is still missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import pytest

from agents.client import Client, ReceivedDocument

DEADLINE_S = 90.0  # generous: a loaded CI machine is slow, a missing event is still caught
ROUND_S = 0.3  # one receive round ends after this long without a message


def receive_until(
    client: Client,
    envelope_ids: Iterable[str] = (),
    *,
    until: Callable[[], bool] | None = None,
    what: str = "",
    deadline: float = DEADLINE_S,
) -> list[ReceivedDocument]:
    """Receive until each of ``envelope_ids`` is in the inbox and ``until()`` holds.

    Returns every document received meanwhile (also others). Notices (receipts,
    statuses, rejections) are taken in by the same rounds, so ``until`` may look at
    ``client.status(...)``.
    """
    want = set(envelope_ids)
    got: list[ReceivedDocument] = []
    end = time.monotonic() + deadline
    while True:
        got += client.receive(idle=ROUND_S)
        missing = want - {d.envelope_id for d in got}
        done = until is None or until()
        if not missing and done:
            return got
        if time.monotonic() > end:
            some = ", ".join(sorted(missing)[:5]) + (", ..." if len(missing) > 5 else "")
            waiting = [f"{len(missing)} envelope(s) ({some})"] if missing else []
            waiting += [] if done else [what or "the condition"]
            pytest.fail(
                f"{client.keys.code}: after {deadline:.0f} s still waiting for "
                + " and ".join(waiting),
                pytrace=False,
            )


def consume_until(
    client: Client, done: Callable[[], bool], timeout: float = DEADLINE_S, what: str = ""
) -> list[ReceivedDocument]:
    """Receive until ``done()`` holds (a status in the agent's state, a file in its inbox)."""
    return receive_until(client, until=done, what=what, deadline=timeout)
