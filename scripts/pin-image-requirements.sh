#!/usr/bin/env bash
# Regenerate compose/requirements.txt (the image's exact dependency versions) from the
# runtime dependencies installed in .venv by scripts/setup-venv.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
deps=$(.venv/bin/python - <<'PY'
import importlib.metadata as md, re
seen, todo = set(), ["cipherpost"]
while todo:
    name = todo.pop()
    for req in md.requires(name) or []:
        if "extra ==" in req:
            continue
        dep = re.split(r"[ ;<>=!~\[]", req, 1)[0]
        if dep.lower() not in seen:
            seen.add(dep.lower())
            todo.append(dep)
print("\n".join(sorted(f"{md.metadata(d)['Name']}=={md.version(d)}" for d in seen)))
PY
)
{
  echo "# The exact versions the image installs (tested together); regenerate with"
  echo "# scripts/pin-image-requirements.sh after changing dependencies in pyproject.toml."
  echo "$deps"
} > compose/requirements.txt
cat compose/requirements.txt
