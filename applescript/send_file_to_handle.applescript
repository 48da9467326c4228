-- Send one file (already inside ~/Library/Messages/, absolute path) to a
-- person through the iMessage account's participant, which also starts the
-- conversation when there is none yet (macOS 13 Ventura and later, where the
-- dictionary calls services accounts).
-- Data arrives only as arguments: osascript - <absolute path> <handle>.
on run argv
	set filePath to item 1 of argv
	set handleId to item 2 of argv
	set theFile to POSIX file filePath
	tell application "Messages"
		set targetService to 1st account whose service type = iMessage
		send theFile to participant handleId of targetService
	end tell
end run
