-- Send one file (already inside ~/Library/Messages/, absolute path) to a
-- person through the SMS service's participant, which also starts the
-- conversation when there is none yet (macOS 11 Big Sur and 12 Monterey, whose
-- dictionary still says service).
-- Data arrives only as arguments: osascript - <absolute path> <handle>.
on run argv
	set filePath to item 1 of argv
	set handleId to item 2 of argv
	set theFile to POSIX file filePath
	tell application "Messages"
		set targetService to 1st service whose service type = SMS
		send theFile to participant handleId of targetService
	end tell
end run
