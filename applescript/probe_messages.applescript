-- A harmless Apple event to Messages: asks for its name. Used by `doctor` and
-- `pair` to find out whether Automation is granted (-1743 when denied).
-- Takes no arguments.
on run argv
	tell application "Messages"
		return name
	end tell
end run
