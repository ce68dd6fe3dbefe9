#!/usr/bin/env bash
# image.sh TAG - build the tally-node image (the Dockerfile) with docker or podman, the
# first that answers, for the Rust release RUST_VERSION (the Makefile's). Where neither
# answers it says why and fails: no engine, no image.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tag=${1:?usage: image.sh TAG}
: "${RUST_VERSION:?is the Rust release to build with (make image sets it)}"

why=()
for engine in docker podman; do
  if ! command -v "$engine" > /dev/null; then
    why+=("$engine is not installed")
    continue
  fi
  if ! err=$("$engine" info 2>&1 > /dev/null); then
    why+=("$engine is installed, but its engine does not answer: $(tail -n 1 <<< "$err")")
    continue
  fi
  echo "image: $engine build -t $tag (Rust $RUST_VERSION)"
  # The Dockerfile's cache mounts need BuildKit (docker's default builder; podman has its own).
  DOCKER_BUILDKIT=1 exec "$engine" build --build-arg "RUST_VERSION=$RUST_VERSION" -t "$tag" .
done
echo "image: no container engine on this machine, so no image was built:" >&2
printf '  %s\n' "${why[@]}" >&2
exit 1
