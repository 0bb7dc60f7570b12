# Multi-stage build of the single `paysync` binary (receiver, worker, migrate, operator CLI).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin paysync

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home paysync
COPY --from=build /src/target/release/paysync /usr/local/bin/paysync
USER paysync
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/paysync"]
CMD ["--help"]
