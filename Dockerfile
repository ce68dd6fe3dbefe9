# The tally-node image the Helm chart runs (helm/tally, values.image).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The image's own Rust 1.95 builds. rust-toolchain.toml names `stable` (see its comment),
# which this image does not have under that name: rustup would download another release.
RUN rm -f rust-toolchain.toml && cargo build --release -p tally-node

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tally-node /usr/local/bin/tally-node
USER 10001
EXPOSE 8080 7946/udp
ENTRYPOINT ["/usr/local/bin/tally-node"]
