# paysync developer tasks. `just` alone lists them. Each recipe is a thin wrapper over what the
# README and .ci/run do, so nothing rots unseen.

# List the recipes.
default:
    @just --list

# Start (and if needed install) the local RabbitMQ and PostgreSQL.
services:
    deploy/local/services.sh

# Run paysync locally on development defaults (services first).
up: services
    cargo run --release --bin paysync -- up

# Apply pending database migrations (services first).
migrate: services
    cargo run --bin paysync -- migrate

# Post N signed events to the local receiver (default 1000), e.g. `just smoke 10000`.
smoke count="1000":
    deploy/local/smoke-load.py --count {{count}}

# With `just up` running: a real Prometheus scrapes it with deploy/prometheus/ and reports the processed rate.
prometheus-check:
    deploy/local/prometheus-check.sh

# Check the alert rules and run their unit tests.
rules:
    promtool check rules deploy/prometheus/alerts.yml
    promtool test rules deploy/prometheus/alerts.test.yml

# Fuzz every parser for SECONDS each (default 600); needs `cargo install cargo-fuzz`.
fuzz seconds="600":
    fuzz/run.sh {{seconds}}

# Run the whole test suite against the local services (the README's test command).
test: services
    cargo test --workspace --all-targets --locked -- --show-output

# Benchmarks (release build): `just bench` (medians of 3 runs, about 20 min) or `just bench --quick` (1 run, about 90 s plus the build). Writes target/bench/report.md; see docs/benchmarks.md.
bench *args: services
    cargo build --release --locked --bin paysync --bin paysync-bench
    target/release/paysync-bench run {{args}}

# Scale-out benchmark: 2 receivers and 1, 2, 4 workers on the three-node cluster (deploy/local/cluster.sh; started and stopped if not running). Extra args go to `paysync-bench run`, e.g. `just bench-cluster --runs 1`. See docs/benchmarks.md.
bench-cluster *args: services
    cargo build --release --locked --bin paysync --bin paysync-bench
    target/release/paysync-bench run --only cluster {{args}}

# Run the console's browser test and keep its screenshots (1280 and 390 px) in docs/console/.
console-screenshots: services
    PAYSYNC_CONSOLE_SCREENSHOTS="$PWD/docs/console" cargo test -p paysync-worker --test it --locked console::an_operator

# Format check and clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# Licenses, duplicate versions and sources of every dependency (advisories where GitHub is reachable).
deny:
    cargo deny check licenses bans sources

# Format the code.
fmt:
    cargo fmt --all

# Everything CI runs.
ci:
    CI=true bash .ci/run

# Sign a fixture and post it to the local receiver, e.g. `just send fixtures/stripe/invoice.paid.json`.
send file:
    cargo run --bin paysync -- send {{file}}
