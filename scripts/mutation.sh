#!/usr/bin/env bash
# Mutation testing of the security-critical modules with mutmut, within a time budget.
#
#   scripts/mutation.sh [--budget SECONDS] [--jobs N] [MODULE[=TEST,TEST...]]...
#
# Each MODULE is mutated (one change at a time: a comparison flipped, a condition
# negated, a string or number changed, a call argument dropped, ...) and each mutant is
# run against the fast, broker-free TESTs that cover it; mutmut runs only the tests that
# call the mutated function. A mutant the tests do not notice "survives". Every survivor
# must be listed with a one-line reason in tests/mutation-survivors.md (equivalent
# mutant, cosmetic message text, ...) or killed by a new test; the script exits 1 if one
# is not listed, 2 if the budget ran out first. Without arguments it runs DEFAULT_TARGETS.
#
# To add a module: scripts/mutation.sh gateway/decide.py=tests/test_decide.py, then add
# it to DEFAULT_TARGETS below. Runs in .mutation/ (a copy of the working tree), niced.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DEFAULT_TARGETS=(
  "envelopes/checking.py=tests/test_checking.py,tests/test_vectors.py"
  "keys/directory.py=tests/test_directory.py,tests/test_directory_checks.py"
  "keys/ca.py=tests/test_ca.py,tests/test_directory_checks.py,tests/test_officials.py"
  "gateway/policy.py=tests/test_policy.py"
  "gateway/witness.py=tests/test_witness.py,tests/test_recovery_ending.py,tests/test_redteam_witness.py"
  "gateway/checkpoint.py=tests/test_witness.py,tests/test_recovery_ending.py,tests/test_redteam_witness.py"
  "gateway/decide.py=tests/test_gateway_decide.py,tests/test_fuzz.py,tests/test_redteam_notices.py,tests/test_redteam_replays.py,tests/test_redteam_revocation.py"
  "gateway/ending.py=tests/test_recovery_ending.py"
  "gateway/auditlog.py=tests/test_audit.py,tests/test_redteam_auditverify.py,tests/test_recovery_ending.py"
)

budget=3600
jobs=2
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) budget=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${DEFAULT_TARGETS[@]}")

[ -x .venv/bin/mutmut ] || bash scripts/setup-venv.sh
work=.mutation
rm -rf "$work"
mkdir -p "$work"
# The working tree as it is (tracked and new files, not what .gitignore ignores).
git ls-files -z -c -o --exclude-standard | grep -zv '^\.mutation/' | tar --null -T - -cf - | tar -xf - -C "$work"

modules=()
tests=()
for t in "${targets[@]}"; do
  module=${t%%=*}
  [ -f "$module" ] || { echo "mutation: no such module $module" >&2; exit 2; }
  modules+=("$module")
  if [ "$t" != "$module" ]; then IFS=, read -r -a more <<<"${t#*=}"; tests+=("${more[@]}"); fi
done
[ ${#tests[@]} -gt 0 ] || { echo "mutation: name the tests of $module (MODULE=TEST,...)" >&2; exit 2; }

.venv/bin/python - "$work/pyproject.toml" "${#modules[@]}" "${modules[@]}" "${tests[@]}" <<'EOF'
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
modules, tests = sys.argv[3 : 3 + n], sorted(set(sys.argv[3 + n :]))
# The generator test re-enrolls every vector agency (argon2) and would slow each mutant down;
# test_vector checks the same outcomes on the committed files.
deselect = ["--deselect", "tests/test_vectors.py::test_generator_reproduces_the_committed_set"]
args = ["-p", "no:cacheprovider", "-q", "-x", "-m", "not broker and not slow", *deselect]
section = f"""
[tool.mutmut]
source_paths = ["keys", "envelopes", "gateway", "broker", "agents"]
only_mutate = {json.dumps(modules)}
pytest_add_cli_args = {json.dumps(args)}
pytest_add_cli_args_test_selection = {json.dumps(tests)}
# A mutant that survives runs every covering test, with their module fixtures (a CA, a
# world), on a machine shared with other test runs: give it time, or a survivor is
# reported as a "timeout" instead.
timeout_constant = 60.0
"""
with open(path, "a") as f:
    f.write(section)
EOF

echo "mutation: ${modules[*]} against ${tests[*]} (budget ${budget}s, ${jobs} jobs)"
start=$(date +%s)
status=0
(cd "$work" && timeout -s INT "$budget" nice -n 10 "$ROOT/.venv/bin/mutmut" run --max-children "$jobs" \
  >run.log 2>&1) || status=$?
elapsed=$(( $(date +%s) - start ))
if [ $status -ne 0 ]; then
  tail -c 2000 "$work/run.log" | tr '\r' '\n' | tail -5 >&2
fi

cd "$work"
"$ROOT/.venv/bin/python" - "$elapsed" "$status" "$ROOT/tests/mutation-survivors.md" "${modules[@]}" <<'EOF'
import json, re, subprocess, sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

elapsed, status, listed_file, modules = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
listed = set(re.findall(r"`([\w.ǁ]+__mutmut_\d+)`", Path(listed_file).read_text()))
survivors, unlisted, rows = [], [], []
for module in modules:
    meta = Path("mutants") / (module + ".meta")
    codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    count = Counter(status_by_exit_code[c] for c in codes.values())
    rows.append((module, len(codes), count))
    for key, code in sorted(codes.items()):
        if status_by_exit_code[code] in ("survived", "no tests", "timeout", "suspicious"):
            survivors.append((key, status_by_exit_code[code]))
print(f"\nmutation run: {elapsed} s" + (" (budget reached: not every mutant ran)" if status == 124 or status == 130 else ""))
print(f"{'module':<28}{'mutants':>8}{'killed':>8}{'survived':>9}{'no tests':>9}{'timeout':>8}{'unrun':>7}")
for module, total, c in rows:
    print(f"{module:<28}{total:>8}{c['killed'] + c['caught by type check']:>8}{c['survived']:>9}"
          f"{c['no tests']:>9}{c['timeout']:>8}{c['not checked']:>7}")
for key, what in survivors:
    if key not in listed:  # a timeout too: it may be a survivor that was only slow
        unlisted.append(key)
Path("summary.json").write_text(json.dumps(
    {"seconds": elapsed, "modules": {m: {"mutants": t, **c} for m, t, c in rows},
     "survivors": [k for k, _ in survivors]}, indent=2))
if unlisted:
    print(f"\n{len(unlisted)} surviving mutant(s) not in tests/mutation-survivors.md:")
    for key in unlisted:
        diff = subprocess.run([sys.executable, "-m", "mutmut", "show", key], capture_output=True, text=True).stdout
        lines = [l for l in diff.splitlines() if l[:1] in "+-" and l[:3] not in ("+++", "---")]
        print(f"- `{key}`\n    " + "\n    ".join(lines))
stale = sorted(k for k in listed if k.split(".x")[0] in {m[:-3].replace("/", ".") for m in modules} and k not in {s for s, _ in survivors})
if stale:
    print(f"\nlisted but killed now (remove from the file): {', '.join(stale)}")
sys.exit(2 if status in (124, 130) else 1 if unlisted else 0)
EOF
