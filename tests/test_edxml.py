"""edXML-style fields for the private metadata (agents/edxml.py)."""

import pytest

from agents import edxml_fields
from keys.errors import UsageError


def test_edxml_fields_are_checked():
    with pytest.raises(UsageError, match="unknown edXML field"):
        edxml_fields(nonsense="x")
    with pytest.raises(UsageError, match="date like"):
        edxml_fields(due_date="next week")
