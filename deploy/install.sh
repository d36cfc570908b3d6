#!/bin/sh
# Installs fedslice from an unpacked release tarball (deploy/package.sh):
# the binaries, the systemd units, the `fedslice` user and the folders the
# units use, with the owners and modes they need. Safe to run again: it
# changes only what differs, and fixes the ownership of files an operator
# created as root (a site bundle, an aggregator state made by `init`).
#
#   sudo ./install.sh
#
# Environment (all optional):
#   DESTDIR   stage into this root instead of / (packaging, tests); the user
#             is then created in DESTDIR/etc/passwd
#   PREFIX    where bin/ and share/doc/ go (default /usr/local)
#   BIN_DIR   the folder holding the aggregator and site-agent binaries
#             (default: bin/ beside this script)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
BIN_DIR=${BIN_DIR:-$here/bin}
user=fedslice
units="fedslice-aggregator.service fedslice-site-agent.service fedslice-serve-model.service fedslice-dicom-node.service"

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

for f in "$BIN_DIR/aggregator" "$BIN_DIR/site-agent"; do
    [ -x "$f" ] || die "$f is missing: run this script from an unpacked release tarball, or set BIN_DIR"
done
for u in $units fedslice.sysusers; do
    [ -f "$here/$u" ] || die "$here/$u is missing"
done

# Binaries and docs.
install -d -m 0755 "$DESTDIR$PREFIX/bin" "$DESTDIR$PREFIX/share/doc/fedslice"
install -m 0755 "$BIN_DIR/aggregator" "$BIN_DIR/site-agent" "$DESTDIR$PREFIX/bin/"
for doc in README.md fedslice-README.md; do
    if [ -f "$here/$doc" ]; then
        install -m 0644 "$here/$doc" "$DESTDIR$PREFIX/share/doc/fedslice/"
    fi
done

# The user, declared for systemd-sysusers so a reinstall or another root
# (an image build) gets the same account.
install -d -m 0755 "$DESTDIR/usr/lib/sysusers.d" "$DESTDIR/etc"
install -m 0644 "$here/fedslice.sysusers" "$DESTDIR/usr/lib/sysusers.d/fedslice.conf"
if command -v systemd-sysusers >/dev/null 2>&1; then
    if [ -n "$DESTDIR" ]; then
        systemd-sysusers --root="$DESTDIR" "$DESTDIR/usr/lib/sysusers.d/fedslice.conf"
    else
        systemd-sysusers /usr/lib/sysusers.d/fedslice.conf
    fi
elif ! grep -q "^$user:" "$DESTDIR/etc/passwd" 2>/dev/null; then
    if [ -n "$DESTDIR" ]; then
        useradd --prefix "$DESTDIR" --system --user-group --home-dir /var/lib/fedslice \
            --no-create-home --shell /usr/sbin/nologin "$user"
    else
        useradd --system --user-group --home-dir /var/lib/fedslice \
            --no-create-home --shell /usr/sbin/nologin "$user"
    fi
fi
uid=$(awk -F: -v u="$user" '$1 == u { print $3 }' "$DESTDIR/etc/passwd" 2>/dev/null || true)
gid=$(awk -F: -v u="$user" '$1 == u { print $3 }' "$DESTDIR/etc/group" 2>/dev/null || true)
[ -n "$uid" ] && [ -n "$gid" ] || die "the $user user was not created in $DESTDIR/etc/passwd"
say "user $user is uid $uid, gid $gid"

# Owners are numeric: in a DESTDIR the name exists only in its passwd.
if [ "$(id -u)" -eq 0 ]; then
    own() { chown "$@"; }
else
    say "not root: folders are created but not given to $user"
    own() { :; }
fi

# Folders: the units' StateDirectory=/CacheDirectory=/ConfigurationDirectory=
# would create them on first start too; creating them here lets the operator
# copy a bundle in, and run `init` or `check`, before that.
dir() { # mode owner:group path
    install -d -m "$1" "$DESTDIR$3"
    chmod "$1" "$DESTDIR$3"
    own "$2" "$DESTDIR$3"
}
dir 0755 0:0 /etc/fedslice
for sub in site serve-model dicom-node; do
    dir 0750 "0:$gid" "/etc/fedslice/$sub"
done
dir 0700 "$uid:$gid" /var/lib/fedslice
dir 0700 "$uid:$gid" /var/lib/fedslice-dicom-node
dir 0755 0:0 /var/cache/fedslice
dir 0700 "$uid:$gid" /var/cache/fedslice/site-agent

# Files an operator put in as root: bundles readable by the services (never
# writable: a compromised service must not swap the key it is trusted by),
# state and cache theirs.
for sub in site serve-model dicom-node; do
    if [ -n "$(ls -A "$DESTDIR/etc/fedslice/$sub")" ]; then
        own -R "0:$gid" "$DESTDIR/etc/fedslice/$sub"
        find "$DESTDIR/etc/fedslice/$sub" -type f -exec chmod 0640 {} +
        find "$DESTDIR/etc/fedslice/$sub" -mindepth 1 -type d -exec chmod 0750 {} +
    fi
done
own -R "$uid:$gid" "$DESTDIR/var/lib/fedslice" "$DESTDIR/var/lib/fedslice-dicom-node" \
    "$DESTDIR/var/cache/fedslice/site-agent"

# Units, pointing at PREFIX's binaries.
unit_dir=$DESTDIR/etc/systemd/system
install -d -m 0755 "$unit_dir"
for u in $units; do
    sed "s#/usr/local/bin/#$PREFIX/bin/#g; s#/usr/local/share/doc/#$PREFIX/share/doc/#g" \
        "$here/$u" > "$unit_dir/$u.tmp"
    chmod 0644 "$unit_dir/$u.tmp"
    mv "$unit_dir/$u.tmp" "$unit_dir/$u"
done
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
say "installed into ${DESTDIR:-/} (binaries in $PREFIX/bin); next steps: $PREFIX/share/doc/fedslice/README.md"
