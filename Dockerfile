# The tally-node image the Helm chart runs (helm/tally, values.image); `make image` builds
# it from a clean checkout. Two stages: the build in the official Rust image of the release
# the project pins, the run in distroless/cc (glibc and libgcc only: no shell, no package
# manager), as a non-root user.

# The Rust release (RUST_VERSION in the Makefile, which `make image` passes).
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG RUST_VERSION
# rdkafka builds librdkafka with CMake (its cmake-build feature); the image has gcc, g++,
# make and the headers of zlib and OpenSSL (libssl-dev) already.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# rust-toolchain.toml names `stable` (its comment says why), a toolchain this image does
# not have under that name: rustup would download another release. Without the file the
# image's own toolchain builds, and it must be the pinned release, as `make toolchain` checks.
RUN rm rust-toolchain.toml \
 && case "$(rustc --version)" in \
      "rustc ${RUST_VERSION}."*) ;; \
      *) echo "image: Tally builds with Rust ${RUST_VERSION}.x, but this image has $(rustc --version)" >&2; exit 1 ;; \
    esac
# The registry and target folders are build caches, kept between builds by the engine, so
# the binary is copied out of them in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tally-node \
 && mkdir -p /out/usr/local/bin \
 && cp target/release/tally-node /out/usr/local/bin/
# The runtime image has glibc and libgcc; the other libraries tally-node links, zlib and
# OpenSSL 3 (librdkafka's TLS and SASL), are copied from this stage (Debian 12 in both).
# Any other library fails the build here, not the pod at start.
RUN set -eu; \
    multiarch=$(gcc -print-multiarch); \
    mkdir -p "/out/usr/lib/$multiarch"; \
    for lib in $(readelf -d /out/usr/local/bin/tally-node | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do \
      case "$lib" in \
        libc.so.*|libm.so.*|libdl.so.*|libpthread.so.*|librt.so.*|libgcc_s.so.*|libstdc++.so.*|ld-linux*) ;; \
        libz.so.1|libssl.so.3|libcrypto.so.3) \
          cp -L "$(ldd /out/usr/local/bin/tally-node | awk -v lib="$lib" '$1 == lib {print $3}')" "/out/usr/lib/$multiarch/" ;; \
        *) echo "image: tally-node needs $lib, which the runtime image lacks" >&2; exit 1 ;; \
      esac; \
    done

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /
# Numeric, so the kubelet can verify runAsNonRoot (the chart's podSecurityContext).
USER 65532:65532
# HTTP API (ingest, queries, /healthz, /readyz, /metrics) and gossip.
EXPOSE 8080 7946/udp
# Arguments follow, e.g. `--config /etc/tally/tally.toml` (the chart's).
ENTRYPOINT ["/usr/local/bin/tally-node"]
