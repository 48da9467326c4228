-- Send one text to a person through the iMessage service's participant, which
-- also starts the conversation when there is none yet (macOS 11 Big Sur and 12
-- Monterey, whose dictionary still says service).
-- Data arrives only as arguments: osascript - <text> <handle>.
on run argv
	set messageText to item 1 of argv
	set handleId to item 2 of argv
	tell application "Messages"
		set targetService to 1st service whose service type = iMessage
		send messageText to participant handleId of targetService
	end tell
end run
