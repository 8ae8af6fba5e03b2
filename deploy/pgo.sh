#!/bin/sh
# The profile-guided build of bearward, in one command that needs only cargo and the Rust
# toolchain's llvm-tools component (added with rustup if missing): no nginx, no wrk, no Python.
#   deploy/pgo.sh [OUT]        # OUT defaults to target/pgo/bearward
# 1. builds bearward with -Cprofile-generate (target/pgo/generate);
# 2. trains it with `bearward demo --train`: the demo's own IdP, echo API and bearward, loaded
#    from the same process over HTTP/1.1 and HTTP/2 with the mix a gateway serves (cached valid
#    tokens, no, expired and tampered tokens, a missing scope, an open route with a body, the
#    RFC 9728 document), half the time on one runtime thread per CPU and half on one thread;
#    every answer is checked, so a run that trained on errors fails;
# 3. merges the profile and builds with -Cprofile-use (target/pgo/use), then runs the training
#    once more against the optimized binary.
# Same source, Cargo.lock and features as `cargo build --release`; only the compiler's choices
# of what to inline and how to lay out code follow the profile. Two fat-LTO builds: about 10
# minutes on 2 cores.
set -eu
cd "$(dirname "$0")/.."
out=${1:-target/pgo/bearward}
seconds=${PGO_TRAIN_SECONDS:-20}
sysroot=$(rustc --print sysroot)
profdata=$(ls "$sysroot"/lib/rustlib/*/bin/llvm-profdata 2>/dev/null | head -n 1 || true)
if [ -z "$profdata" ]; then
  rustup component add llvm-tools
  profdata=$(ls "$sysroot"/lib/rustlib/*/bin/llvm-profdata | head -n 1)
fi
dir=$(pwd)/target/pgo
rm -rf "$dir/profiles"
mkdir -p "$dir/profiles"
echo "pgo: instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$dir/profiles" \
  cargo build --release --locked --quiet --bin bearward --target-dir "$dir/generate"
echo "pgo: training for ${seconds} s" >&2
"$dir/generate/release/bearward" demo --train "$seconds" 2>/dev/null >&2
"$profdata" merge -o "$dir/bearward.profdata" "$dir"/profiles/*.profraw
echo "pgo: optimized build" >&2
RUSTFLAGS="-Cprofile-use=$dir/bearward.profdata" \
  cargo build --release --locked --quiet --bin bearward --target-dir "$dir/use"
"$dir/use/release/bearward" demo --train 2 2>/dev/null >&2
mkdir -p "$(dirname "$out")"
cp "$dir/use/release/bearward" "$out"
echo "$out"
