# Commands people repeat. `just --list` shows them; each is a plain cargo command you can run
# without just.

# Every test of the workspace (the README's test command).
test:
    cargo test --workspace

# Formatting check and clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# What CI runs: versions, lint, test.
ci:
    bash .ci/run

# The DESIGN §6 workloads; one JSON object per line on stdout.
bench:
    cargo run --release -- bench

# Run the example research plan (see README.md).
demo:
    cargo run --release -- run examples/research.yaml
