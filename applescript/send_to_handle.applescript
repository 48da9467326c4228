-- Send one text to a person through the iMessage account's participant, which
-- also starts the conversation when there is none yet (macOS 13 Ventura and
-- later, where the dictionary calls services accounts).
-- Data arrives only as arguments: osascript - <text> <handle>.
on run argv
	set messageText to item 1 of argv
	set handleId to item 2 of argv
	tell application "Messages"
		set targetService to 1st account whose service type = iMessage
		send messageText to participant handleId of targetService
	end tell
end run
