#!/usr/bin/env bash
# Copies, from a git snapshot of RustSec's advisory database, the advisories of the crates
# in Cargo.lock into DEST, in the database's own layout (crates/<name>/RUSTSEC-*.md), so
# that `make audit` can run cargo-audit offline against it (see README, Development).
#
# Usage: scripts/vendor-advisories.sh ADVISORY_DB_GIT_DIR [DEST]
#   ADVISORY_DB_GIT_DIR  a clone or bare snapshot of the advisory database (its HEAD is read)
#   DEST                 default .services/advisory-db; replaced whole
#
# DEST also gets checked-crates.txt, every crate name of Cargo.lock at the time: `make audit`
# refuses a Cargo.lock with a crate that is not in it, since a crate without a folder here
# may have advisories that were never copied. Run again after Cargo.lock gains a crate.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

src=${1:?usage: $0 ADVISORY_DB_GIT_DIR [DEST]}
dest=${2:-.services/advisory-db}
git_db() { git --git-dir="$src" "$@"; }
if [ -d "$src/.git" ]; then src="$src/.git"; fi
git_db rev-parse --verify -q HEAD > /dev/null || { echo "$src: not a git repository with a HEAD" >&2; exit 1; }

commit=$(git_db log -1 --format=%H HEAD)
date=$(git_db log -1 --format=%cI HEAD)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Sorted bytewise, as `make audit` compares it with `comm`.
sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.lock | LC_ALL=C sort -u > "$tmp/checked-crates.txt"
copied=0
while read -r crate; do
  while read -r path; do
    case "$path" in *.md | *.toml) ;; *) continue ;; esac
    mkdir -p "$tmp/$(dirname "$path")"
    git_db show "HEAD:$path" > "$tmp/$path"
    copied=$((copied + 1))
  done < <(git_db ls-tree -r --name-only HEAD -- "crates/$crate/")
done < "$tmp/checked-crates.txt"
git_db show HEAD:LICENSE.txt > "$tmp/LICENSE.txt"

cat > "$tmp/README.md" <<EOF
# RustSec advisories for Tally's Cargo.lock

A subset of the RustSec advisory database (https://github.com/rustsec/advisory-db,
CC0-1.0, see LICENSE.txt): the advisories of the crates listed in checked-crates.txt, in the
database's own layout, read by \`make audit\` (cargo-audit --no-fetch --db).

- snapshot commit: $commit
- snapshot date: $date
- advisories copied: $copied
- made by: scripts/vendor-advisories.sh on $(date -u +%Y-%m-%d)

Re-make it from a newer snapshot, or after Cargo.lock gains a crate, with
\`scripts/vendor-advisories.sh SNAPSHOT_GIT_DIR DEST\`.
EOF

rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
cp -r "$tmp" "$dest"
chmod -R a+rX "$dest"
echo "vendored $copied advisories of $(wc -l < "$tmp/checked-crates.txt") crates from $commit ($date) into $dest"
