# Shared by ops/run, ops/test and ops/lock: create .venv and install into it, from the lock,
# every dependency at its pinned version with its hash checked, then the project itself
# (editable) without dependencies. `run` installs requirements.lock (what the image has),
# `test` requirements-test.lock (the same pins plus the test and cluster extras).
# Re-runs are cheap: the install is skipped while setup.cfg, pyproject.toml and the lock
# are unchanged.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
case "$1" in
  run) lock=requirements.lock ;;
  test) lock=requirements-test.lock ;;
  *) echo "ops/_env.sh: run or test, not '$1'" >&2; exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum setup.cfg pyproject.toml "$lock" | sha256sum | cut -c1-16)-$1"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --require-hashes --no-deps -r "$lock"
  .venv/bin/python -m pip install --quiet --no-deps -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi
