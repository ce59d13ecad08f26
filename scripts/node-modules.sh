#!/usr/bin/env bash
# Installs (once) the npm packages of a directory's package-lock.json and prints the
# node_modules directory, like scripts/python-venv.sh does for Python.
#   scripts/node-modules.sh DIR NAME   npm ci of DIR/package{,-lock}.json into .cache/node/NAME
# Reinstalled when either file changes (their sha256 is kept beside it). Installs Debian's
# nodejs and npm first when missing (as root). Diagnostics go to stderr; stdout is only the
# node_modules path, so `modules=$(scripts/node-modules.sh dir name)` works.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:?usage: node-modules.sh DIR NAME}"
name="${2:?usage: node-modules.sh DIR NAME}"
[[ -f "$dir/package.json" && -f "$dir/package-lock.json" ]] ||
  { echo "node-modules: $dir needs package.json and package-lock.json" >&2; exit 2; }
target="$root/.cache/node/$name"
mkdir -p "$root/.cache/node"
exec 9>"$root/.cache/node/$name.lock"
flock 9
missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "node-modules: missing packages: ${missing[*]}. Install them as root:
  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  echo "node-modules: installing ${missing[*]}" >&2
  apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    --no-install-recommends "${missing[@]}" >&2
fi
want="$(cat "$dir/package.json" "$dir/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$target/.stamp" 2>/dev/null)" != "$want" || ! -d "$target/node_modules" ]]; then
  echo "node-modules: npm ci ($name) into .cache/node/$name" >&2
  rm -rf "$target"
  mkdir -p "$target"
  cp "$dir/package.json" "$dir/package-lock.json" "$target/"
  (cd "$target" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  echo "$want" >"$target/.stamp"
fi
echo "$target/node_modules"
