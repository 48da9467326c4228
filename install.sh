#!/bin/sh
# Install whatsnap-mac at a stable path.
#
# macOS ties Full Disk Access and Automation grants to the binary's path, so the
# binary lives at one place and upgrades replace it there.
#
# Usage: ./install.sh [--binary PATH]
#   --binary PATH   install this prebuilt binary instead of building with cargo
#
# Coming: LaunchAgent install, ad-hoc signing, --uninstall and --purge.
set -eu

prefix="${WHATSNAP_PREFIX:-$HOME/Library/Application Support/whatsnap/bin}"
binary=""

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ -z "$binary" ]; then
  command -v cargo >/dev/null 2>&1 || {
    echo "install.sh: cargo not found; install Rust from https://rustup.rs or pass --binary" >&2
    exit 2
  }
  cargo build --release --locked
  binary="target/release/whatsnap-mac"
fi

[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 2; }

mkdir -p "$prefix"
cp "$binary" "$prefix/whatsnap-mac.new"
mv -f "$prefix/whatsnap-mac.new" "$prefix/whatsnap-mac"
echo "Installed $prefix/whatsnap-mac"
echo
echo "Next:"
echo "  1. Grant Full Disk Access to $prefix/whatsnap-mac"
echo "     (System Settings > Privacy & Security > Full Disk Access)."
echo "  2. Pair:  \"$prefix/whatsnap-mac\" pair --server https://YOUR-SERVICE CODE"
echo "  3. Run:   \"$prefix/whatsnap-mac\" run   (Automation for Messages is asked at the first send)"
