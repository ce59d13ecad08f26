#!/usr/bin/env bash
# Checks that deploy/Dockerfile's build stage gets every file the release binaries need,
# without Docker (no engine here, and the base images cannot be pulled):
#   1. parses the Dockerfile's local COPY/ADD lines (sources relative to the repository root);
#      a source that does not exist fails;
#   2. applies .dockerignore: a copied file that it excludes fails;
#   3. lays the build stage's copies out, exactly, in a fresh target/image-context/src
#      (a fixed path keeps fingerprints and incremental state valid between runs);
#   4. compiles the two images' crates there, offline from the local registry cache.
#      A file the context lacks (include_str!, a manifest, a build script's input) fails,
#      naming the path;
#   5. every file those crates read (their dep-info) lies inside the context, which sits in
#      the repository, where a path escaping it would still resolve here but not in Docker.
# Step 4 is `cargo check`, not the image's `cargo build --release`: check evaluates
# include_str!/include_bytes!, manifests and build scripts just as build does. It has a target
# dir of its own (target/image-check): cargo names a workspace crate's artifacts after its path
# relative to the workspace root, which the copy shares with the repository, so checking the
# copy in the main target dir overwrote the tree's own artifacts and later builds took them
# as fresh (stale code compiled against). Measured on 2 cores: about 2.5 min cold, seconds
# warm; the release build into its own target dir took 11 min cold (machine shared), 55 s
# warm. IMAGE_CHECK=release runs that build instead (into target/image-build).
# Usage: scripts/check-image-context.sh   (DOCKERFILE overrides deploy/Dockerfile)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dockerfile="${DOCKERFILE:-deploy/Dockerfile}"
ctx="target/image-context"

fail() { echo "check-image-context: FAIL: $*" >&2; exit 1; }

[[ -f "$dockerfile" ]] || fail "no $dockerfile"
# One run at a time: the context directory is fixed.
mkdir -p target
exec 9>target/image-context.lock
flock 9
rm -rf "$ctx"
mkdir -p "$ctx"

# Steps 1-3. Prints the build stage's WORKDIR inside the context (where cargo runs).
workdir="$(python3 - "$dockerfile" "$ctx" <<'PY'
import glob, json, os, re, shutil, sys

dockerfile, ctx = sys.argv[1], sys.argv[2]
errors = []

# Logical instructions: continuation lines joined, comments and blank lines dropped.
lines, cur = [], ""
for raw in open(dockerfile):
    s = raw.rstrip("\n")
    if not cur and (not s.strip() or s.lstrip().startswith("#")):
        continue
    if cur and s.lstrip().startswith("#"):
        continue  # comment inside a continued instruction
    if s.rstrip().endswith("\\"):
        cur += s.rstrip()[:-1] + " "
        continue
    lines.append(cur + s)
    cur = ""
if cur:
    lines.append(cur)

# Stages: their WORKDIR, local copies, and whether they run cargo build.
stages = []
for line in lines:
    word, _, rest = line.strip().partition(" ")
    word = word.upper()
    if word == "FROM":
        stages.append({"from": rest.strip(), "workdir": "/", "copies": [], "cargo": False})
    elif not stages:
        continue
    elif word == "WORKDIR":
        wd = rest.strip()
        stages[-1]["workdir"] = os.path.normpath(os.path.join(stages[-1]["workdir"], wd))
    elif word == "RUN" and re.search(r"\bcargo\s+build\b", rest):
        stages[-1]["cargo"] = True
    elif word in ("COPY", "ADD"):
        rest = rest.strip()
        opts = []
        while rest.startswith("--"):
            opt, _, rest = rest.partition(" ")
            opts.append(opt)
            rest = rest.strip()
        if any(o.startswith("--from") for o in opts):
            continue  # from another stage, not the context
        unknown = [o for o in opts if not o.startswith(("--chown", "--chmod", "--link"))]
        if unknown:
            errors.append(f"{word} {' '.join(unknown)} is not understood by this check: {line.strip()}")
            continue
        args = json.loads(rest) if rest.startswith("[") else rest.split()
        if len(args) < 2:
            errors.append(f"{word} without source and destination: {line.strip()}")
            continue
        if word == "ADD" and any(re.match(r"^[a-z]+://", a) for a in args[:-1]):
            errors.append(f"ADD of a URL is outside the build context: {line.strip()}")
            continue
        stages[-1]["copies"].append((args[:-1], args[-1], stages[-1]["workdir"], line.strip()))

builds = [s for s in stages if s["cargo"]]
if len(builds) != 1:
    errors.append(f"expected exactly one stage that runs cargo build, found {len(builds)}")

# .dockerignore, as Docker reads it: the last matching pattern wins, `!` re-includes, and a
# pattern matching a parent directory excludes everything under it.
def pattern_re(p):
    out, i = "", 0
    while i < len(p):
        c = p[i]
        if p.startswith("**/", i):
            out += "(?:.*/)?"; i += 3; continue
        if p.startswith("**", i):
            out += ".*"; i += 2; continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out + r"\Z")

ignore = []
if os.path.exists(".dockerignore"):
    for raw in open(".dockerignore"):
        p = raw.strip()
        if not p or p.startswith("#"):
            continue
        neg = p.startswith("!")
        p = os.path.normpath(p[1:].strip() if neg else p).lstrip("/")
        ignore.append((neg, pattern_re(p), raw.strip()))

def ignored_by(rel):
    parts = rel.split("/")
    hit = None
    for neg, rx, raw in ignore:
        if any(rx.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            hit = None if neg else raw
    return hit

def files_under(path):
    if os.path.isdir(path):
        for d, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                full = os.path.join(d, f)
                yield os.path.relpath(full, path), os.path.normpath(full)
    else:
        yield "", os.path.normpath(path)

build = builds[0] if len(builds) == 1 else None
for stage in stages:
    for srcs, dest, wd, line in stage["copies"]:
        into_dir = len(srcs) > 1 or dest.endswith("/") or dest in (".", "./")
        target = os.path.normpath(dest if dest.startswith("/") else os.path.join(wd, dest))
        for src in srcs:
            if os.path.isabs(src) or os.path.normpath(src).startswith(".."):
                errors.append(f"COPY source {src} is outside the build context: {line}")
                continue
            matches = sorted(glob.glob(src)) if any(c in src for c in "*?[") else ([src] if os.path.exists(src) else [])
            if not matches:
                errors.append(f"COPY source {src} does not exist in the repository: {line}")
                continue
            for m in matches:
                for sub, rel in files_under(m):
                    why = ignored_by(rel)
                    if why:
                        errors.append(f"{rel} is copied by `{line}` but excluded by .dockerignore pattern `{why}`")
                        continue
                    if stage is not build:
                        continue
                    if os.path.isdir(m):
                        to = os.path.join(target, sub)
                    elif into_dir:
                        to = os.path.join(target, os.path.basename(m))
                    else:
                        to = target
                    # Inside the stage's filesystem, laid out under the context directory.
                    out = os.path.join(ctx, to.lstrip("/"))
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    shutil.copy2(rel, out)  # keeps mtimes: cargo's fingerprints stay fresh

if errors:
    for e in errors:
        print(f"check-image-context: FAIL: {e}", file=sys.stderr)
    sys.exit(1)
print(build["workdir"].lstrip("/") if build else "")
PY
)" || fail "$dockerfile or .dockerignore (see above)"

src="$ctx/$workdir"
[[ -f "$src/Cargo.toml" ]] || fail "the build stage has no Cargo.toml in its WORKDIR /$workdir"
echo "check-image-context: build stage context laid out in $src ($(find "$src" -type f | wc -l) files)"

if [[ "${IMAGE_CHECK:-check}" == release ]]; then
  cmd=(cargo build --release --offline --locked -p sessionizer --bin sessionizer -p gateway --bin gateway)
  target_dir="$root/target/image-build"
else
  cmd=(cargo check --offline --locked -p sessionizer -p gateway)
  target_dir="$root/target/image-check"
fi
echo "check-image-context: ${cmd[*]} (in the copied context)"
# Diagnostics go to stderr as usual; the JSON on stdout names each crate's dep-info file.
status=0
(cd "$src" && CARGO_TARGET_DIR="$target_dir" "${cmd[@]}" --message-format=json-render-diagnostics) \
  >"$ctx/cargo.jsonl" 2> >(tee "$ctx/cargo.log" >&2) || status=$?
wait  # for tee
python3 - "$src" "$target_dir" "$ctx/cargo.jsonl" "$ctx/cargo.log" "$status" "$dockerfile" <<'PY'
import glob, json, os, re, sys

src, target_dir, jsonl, log, status, dockerfile = sys.argv[1:7]
src = os.path.realpath(src)
status = int(status)

def rel(p):
    return os.path.relpath(os.path.normpath(os.path.join(src, p)), src)

if status != 0:
    # What rustc or cargo could not read, as the repository path a COPY must bring.
    text = open(log, errors="replace").read()
    missing = sorted({rel(m) for m in re.findall(r"(?:couldn't read|failed to read) `([^`]+)`", text)})
    for m in missing:
        print(f"check-image-context: FAIL: the image's build context lacks {m} "
              f"(add a COPY for it to {dockerfile}, and keep it out of .dockerignore)", file=sys.stderr)
    if not missing:
        print("check-image-context: FAIL: cargo failed in the copied build context (see above)", file=sys.stderr)
    sys.exit(1)

# The context sits inside the repository, so a path escaping it could still be read here but
# not in Docker: every file the workspace crates read must lie inside the context.
allowed = [src] + [os.path.realpath(p) for p in (
    os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo")),
    os.environ.get("RUSTUP_HOME", os.path.expanduser("~/.rustup")), target_dir)]
outside, crates = set(), 0
for line in open(jsonl):
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or src not in msg.get("package_id", ""):
        continue
    crates += 1
    for f in msg.get("filenames", []):
        h = re.search(r"-([0-9a-f]{16})\.[a-z]+$", f)
        for d in glob.glob(os.path.join(os.path.dirname(f), f"*-{h.group(1)}.d")) if h else []:
            for dl in open(d):
                if dl.startswith("#") or ":" not in dl:
                    continue
                for dep in dl.split(":", 1)[1].split():
                    path = os.path.realpath(os.path.join(src, dep))
                    if not any(path == a or path.startswith(a + os.sep) for a in allowed):
                        outside.add(path)
if crates == 0:
    print("check-image-context: FAIL: cargo reported no workspace crate of the context", file=sys.stderr)
    sys.exit(1)
for p in sorted(outside):
    print(f"check-image-context: FAIL: a crate reads {p}, outside the image's build context", file=sys.stderr)
sys.exit(1 if outside else 0)
PY
echo "check-image-context: OK: the build stage's COPY lines give the binaries everything they need"
