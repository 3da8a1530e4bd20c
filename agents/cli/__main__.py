"""``python -m agents.cli``: the ``cipherpost`` command, from a checkout."""

from agents.cli import entry

if __name__ == "__main__":
    entry()
