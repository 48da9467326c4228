#!/bin/sh
# WhatSnap bridge status in the menu bar, for SwiftBar and xbar.
#
# <xbar.title>WhatSnap</xbar.title>
# <xbar.version>v0.1.0</xbar.version>
# <xbar.author>WhatSnap</xbar.author>
# <xbar.desc>Shows whether the WhatSnap iMessage bridge (whatsnap-mac) is connected, with Restart, Doctor, Logs and Pair.</xbar.desc>
# <xbar.dependencies>whatsnap-mac</xbar.dependencies>
# <xbar.var>string(WHATSNAP_MAC=""): Path of whatsnap-mac if not installed by install.sh.</xbar.var>
# <swiftbar.hideRunInTerminal>true</swiftbar.hideRunInTerminal>
# <swiftbar.refreshOnOpen>true</swiftbar.refreshOnOpen>
#
# Copy (or link) this file into your SwiftBar or xbar plugin folder. The
# ".30s" in its name refreshes it every 30 seconds. The menu itself comes from
# `whatsnap-mac status --format swiftbar|xbar`, which always exits 0 so the
# bar shows the bridge's state rather than a plugin error.

bin="${WHATSNAP_MAC:-}"
[ -n "$bin" ] || bin="$HOME/Library/Application Support/whatsnap/bin/whatsnap-mac"

if [ ! -x "$bin" ]; then
  echo "○ WS | color=#cf222e"
  echo "---"
  echo "whatsnap-mac is not installed at $bin"
  echo "Install it with ./install.sh from the whatsnap-mac sources"
  exit 0
fi

if [ -n "${SWIFTBAR:-}" ]; then
  format="swiftbar"
else
  format="xbar"
fi
exec "$bin" status --format "$format"
