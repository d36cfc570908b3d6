#!/bin/sh
# Builds the release tarball: OUT_DIR/fedslice-VERSION-ARCH-linux.tar.gz with
# the binaries, the systemd units, install.sh, the docs and SHA256SUMS.
#
#   deploy/package.sh [OUT_DIR]        (default: target/dist)
#
# FEDSLICE_NO_BUILD=1 packages the binaries already in the target folder
# (CARGO_TARGET_DIR or target/) instead of building them first.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
out=${1:-$target/dist}

if [ -z "${FEDSLICE_NO_BUILD:-}" ]; then
    cargo build --release --workspace --features wgpu
fi
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || { echo "package.sh: no version in Cargo.toml" >&2; exit 1; }
name=fedslice-$version-$(uname -m)-linux

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/$name
mkdir -p "$stage/bin"
for b in aggregator site-agent; do
    [ -x "$target/release/$b" ] || { echo "package.sh: $target/release/$b is missing" >&2; exit 1; }
    install -m 0755 "$target/release/$b" "$stage/bin/"
done
install -m 0755 deploy/install.sh "$stage/"
install -m 0644 deploy/*.service deploy/fedslice.sysusers deploy/README.md "$stage/"
install -m 0644 README.md "$stage/fedslice-README.md"
(cd "$stage" && find . -type f ! -name SHA256SUMS | sed 's#^\./##' | LC_ALL=C sort \
    | xargs sha256sum > SHA256SUMS)

mkdir -p "$out"
# Fixed owner, order and times: the same binaries give the same tarball.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    -C "$work" -czf "$out/$name.tar.gz.tmp" "$name"
mv "$out/$name.tar.gz.tmp" "$out/$name.tar.gz"
echo "$out/$name.tar.gz"
