# Homebrew formula for whatsnap-mac, the SMS/iMessage account of WhatSnap.
#
# `brew services start whatsnap-mac` runs the same LaunchAgent as
# `whatsnap-mac install` (see launchd/com.whatsnap.mac.plist): the binary
# itself with `run`, started at login, restarted after a crash, logs under
# ~/Library/Logs/whatsnap. Homebrew labels it homebrew.mxcl.whatsnap-mac.
#
# macOS grants Full Disk Access and Automation to the binary's path. Grant
# them to "#{opt_bin}/whatsnap-mac" (the stable opt path, not the versioned
# Cellar path); after `brew upgrade`, toggle both grants off and on, or use
# ./install.sh, which keeps one path and one signing identifier.
class WhatsnapMac < Formula
  desc "SMS/iMessage account of WhatSnap, on your own Mac"
  homepage "https://github.com/whatsnap/whatsnap-mac"
  url "https://github.com/whatsnap/whatsnap-mac/archive/refs/tags/v0.1.0.tar.gz"
  # Fill in with the release tarball's checksum when publishing.
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  license any_of: ["MIT", "Apache-2.0"]
  head "https://github.com/whatsnap/whatsnap-mac.git", branch: "main"

  depends_on "rust" => :build
  depends_on :macos

  def install
    system "cargo", "install", "--locked", "--profile", "dist", *std_cargo_args
    generate_completions_from_executable(bin/"whatsnap-mac", "completions")
    (man1/"whatsnap-mac.1").write Utils.safe_popen_read(bin/"whatsnap-mac", "man")
  end

  def caveats
    <<~EOS
      Grant these to #{opt_bin}/whatsnap-mac in System Settings > Privacy & Security:
        1. Full Disk Access (to read ~/Library/Messages/chat.db)
        2. Automation > Messages (asked at the first send)
      Then pair once:
        whatsnap-mac pair --server https://YOUR-SERVICE CODE
      and check:
        whatsnap-mac doctor
    EOS
  end

  service do
    run [opt_bin/"whatsnap-mac", "run"]
    run_type :immediate
    keep_alive successful_exit: false, crashed: true
    throttle_interval 10
    process_type :standard
    environment_variables PATH:               "/usr/bin:/bin:/usr/sbin:/sbin",
                          WHATSNAP_HOME:      "#{Dir.home}/Library/Application Support/whatsnap",
                          WHATSNAP_LOG_FILE:  "#{Dir.home}/Library/Logs/whatsnap/whatsnap-mac.log"
    log_path "#{Dir.home}/Library/Logs/whatsnap/whatsnap-mac.log"
    error_log_path "#{Dir.home}/Library/Logs/whatsnap/whatsnap-mac.log"
  end

  test do
    assert_match "whatsnap-mac", shell_output("#{bin}/whatsnap-mac --version")
    # Not running under test: status says so and exits 3 (down).
    output = shell_output("#{bin}/whatsnap-mac --home #{testpath} status", 3)
    assert_match "not running", output
  end
end
