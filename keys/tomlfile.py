"""Reading the project's TOML settings files (GATEWAY.toml, AGENT.toml) strictly.

A typo must not be silently ignored: ``checkpoint_evry = 10`` in a gateway
config would leave the default in force while the operator believes
otherwise. Every key is checked against the file's schema and an unknown one
is refused with a one-line error naming it (and the likely intended key).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keys.errors import CipherpostError

# A schema maps each allowed key to None (a value) or to the schema of a table.
Schema = Mapping[str, "Schema | None"]


def load_toml(path: Path, what: str, schema: Schema) -> dict[str, Any]:
    """Parse ``path`` and refuse any key ``schema`` does not name."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CipherpostError(f"cannot read {what} {path}: {e.strerror}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CipherpostError(f"{path}: not valid TOML: {e}") from e
    _check(doc, schema, path, "")
    return doc


def _check(table: Mapping[str, Any], schema: Schema, path: Path, prefix: str) -> None:
    for key, value in table.items():
        name = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f" (did you mean {prefix}{close[0]!r}?)" if close else ""
            raise CipherpostError(f"{path}: unknown setting {name!r}{hint}")
        sub = schema[key]
        if sub is None:
            if isinstance(value, dict):
                raise CipherpostError(f"{path}: {name!r} is a value, not a table")
            continue
        if not isinstance(value, dict):
            raise CipherpostError(f"{path}: {name!r} must be a table ([{name}])")
        _check(value, sub, path, f"{name}.")
