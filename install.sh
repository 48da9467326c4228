#!/bin/sh
# Install whatsnap-mac at a stable path and run it as a LaunchAgent.
#
# macOS ties Full Disk Access and Automation grants to the binary's path and
# signature, so the binary lives at one place, is signed with one fixed
# identifier, and upgrades replace it there. Running this again upgrades in
# place; the state folder (pairing, queues) is never touched except by --purge.
#
# Usage: ./install.sh [--binary PATH]       install or upgrade
#        ./install.sh --uninstall [--purge] remove the agent and the binary
#                                           (--purge: also the state and logs)
#   --binary PATH   install this prebuilt binary instead of building with cargo
#
# Environment: WHATSNAP_PREFIX (binary folder, default
# ~/Library/Application Support/whatsnap/bin), WHATSNAP_CODESIGN (codesign to
# use, default /usr/bin/codesign; skipped when absent).
set -eu

prefix="${WHATSNAP_PREFIX:-$HOME/Library/Application Support/whatsnap/bin}"
codesign="${WHATSNAP_CODESIGN:-/usr/bin/codesign}"
identifier="com.whatsnap.mac"
binary=""
mode="install"
purge=""

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    --uninstall) mode="uninstall"; shift ;;
    --purge) purge="--purge"; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ -n "$purge" ] && [ "$mode" != "uninstall" ]; then
  echo "install.sh: --purge only goes with --uninstall" >&2
  exit 2
fi

target="$prefix/whatsnap-mac"

if [ "$mode" = "uninstall" ]; then
  if [ -x "$target" ]; then
    # The binary knows where its agent, state and logs are.
    if [ -n "$purge" ]; then "$target" uninstall --purge; else "$target" uninstall; fi
  else
    echo "install.sh: no binary at $target; nothing to unload" >&2
  fi
  rm -f "$target"
  rmdir "$prefix" 2>/dev/null || true
  echo "Removed $target"
  exit 0
fi

if [ -z "$binary" ]; then
  command -v cargo >/dev/null 2>&1 || {
    echo "install.sh: cargo not found; install Rust from https://rustup.rs or pass --binary" >&2
    exit 2
  }
  # The shipping profile (Cargo.toml): whole-program optimised, a few minutes.
  cargo build --profile dist --locked
  binary="target/dist/whatsnap-mac"
fi

[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 2; }

mkdir -p "$prefix"
# Copy beside and rename over, so the path never holds half a binary.
cp "$binary" "$target.new"
chmod 755 "$target.new"
mv -f "$target.new" "$target"

if [ -x "$codesign" ]; then
  # Ad-hoc, but always the same identifier, so the grants survive upgrades
  # as well as an ad-hoc signature can.
  "$codesign" --force --sign - --identifier "$identifier" "$target"
  echo "Signed $target as $identifier"
else
  echo "note: $codesign not found; the binary is not signed (macOS may forget its permissions at each upgrade)"
fi

echo "Installed $target"
echo
"$target" install
