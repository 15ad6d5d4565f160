# syntax=docker/dockerfile:1
#
# Eloquent server image.
#   docker build -t eloquent .
#   docker run -p 8000:8000 -v eloquent-data:/data eloquent
# Configuration comes from the environment (see .env.example), e.g.
#   docker run -p 8000:8000 -v eloquent-data:/data -e OPENAI_API_KEY=sk-... -e JWT_SECRET=... eloquent

# ---------------------------------------------------------------- build
FROM rust:1-bookworm AS builder
WORKDIR /app

# Dependencies first, with placeholder sources: editing src/ then rebuilds
# only this crate, not the few hundred dependencies.
# The bench (bench/) is a workspace member: its manifest must be there for
# cargo to read the workspace, but only the server (`-p eloquent`) is built.
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml ./bench/Cargo.toml
COPY .cargo ./.cargo
RUN mkdir src bench/src \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > bench/src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked -p eloquent \
    && rm -rf src

# migrations/ is embedded into the binary at compile time (sqlx::migrate!).
COPY migrations ./migrations
COPY src ./src
# COPY keeps the files' old timestamps: make sure cargo sees them as newer
# than the placeholder build.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked -p eloquent --bin eloquent \
    && cp target/release/eloquent /usr/local/bin/eloquent

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim

# ca-certificates: TLS to OpenAI/Pinecone uses rustls with the platform
# verifier, which reads the system CA store. curl: the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system eloquent \
    && useradd --system --gid eloquent --home-dir /data --no-create-home --shell /usr/sbin/nologin eloquent \
    && mkdir -p /data \
    && chown eloquent:eloquent /data

COPY --from=builder /usr/local/bin/eloquent /usr/local/bin/eloquent

# The SQLite database lives in /data (mount a volume there to keep it).
WORKDIR /data
USER eloquent
ENV DATABASE_URL=sqlite:////data/chat.db \
    HOST=0.0.0.0 \
    PORT=8000
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT:-8000}/health" >/dev/null || exit 1

# `docker run IMAGE migrate` applies migrations (adopting a Python-service database) and exits;
# `docker run IMAGE migrate --dry-run` reports what it would adopt.
ENTRYPOINT ["/usr/local/bin/eloquent"]
