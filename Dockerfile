# syntax=docker/dockerfile:1
# Build stage: release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY templates templates
COPY benches benches
COPY tests tests
RUN cargo build --release --locked --bin audithook

# Runtime stage: small image, non-root user, database on a volume.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data audithook \
    && mkdir -p /data /app \
    && chown audithook /data
COPY --from=build /src/target/release/audithook /usr/local/bin/audithook
COPY templates /app/templates
USER audithook
WORKDIR /data
ENV AUDITHOOK_LISTEN=0.0.0.0:8080 \
    AUDITHOOK_DATABASE_URL=sqlite:///data/audithook.db \
    AUDITHOOK_TEMPLATES=/app/templates \
    RUST_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["audithook"]
CMD ["serve"]
