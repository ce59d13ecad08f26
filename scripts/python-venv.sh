#!/usr/bin/env bash
# Creates (once) a Python virtual environment for one tool set and prints its bin directory.
#   scripts/python-venv.sh NAME   installs scripts/requirements/NAME.txt into .cache/venv/NAME
# The venv is rebuilt when the requirements file changes (its sha256 is stored beside it).
# Diagnostics go to stderr; stdout is only the bin directory, so `bin=$(scripts/python-venv.sh x)` works.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
name="${1:?usage: python-venv.sh NAME}"
req="$root/scripts/requirements/$name.txt"
[[ -f "$req" ]] || { echo "python-venv: no requirements file $req" >&2; exit 2; }
venv="$root/.cache/venv/$name"
want="$(sha256sum "$req" | cut -d' ' -f1)"
# Tests running in parallel may ask for the same venv at once: one installs, the others wait.
mkdir -p "$root/.cache/venv"
exec 9>"$root/.cache/venv/$name.lock"
flock 9
if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]]; then
  echo "python-venv: installing $name into .cache/venv/$name" >&2
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
  echo "$want" >"$venv/.requirements.sha256"
fi
echo "$venv/bin"
