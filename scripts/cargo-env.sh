# Sourced by scripts/setup and scripts/test: rustup's cargo on the PATH where a non-login
# shell has not put it there yet, and cargo's build of native/tls (fluidfed._rustls) kept
# outside the repository, so a fresh clone (and the image's wheel) builds only what changed.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fluidfed/cargo-target}"
