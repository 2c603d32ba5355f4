# Shared by ops/run and ops/test: create .venv and install the project into it.
# Re-runs are cheap: the install is skipped while setup.cfg is unchanged.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum setup.cfg pyproject.toml | sha256sum | cut -c1-16)-$1"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  if [ "$1" = test ]; then
    .venv/bin/python -m pip install --quiet -e '.[test]'
  else
    .venv/bin/python -m pip install --quiet -e .
  fi
  touch "$stamp"
fi
