-- Send one text to a person who has no conversation on this Mac yet, through
-- the iMessage account's participant (macOS 11 and later).
-- Data arrives only as arguments: osascript - <text> <handle>.
on run argv
	set messageText to item 1 of argv
	set handleId to item 2 of argv
	tell application "Messages"
		set imessageAccount to 1st account whose service type = iMessage
		send messageText to participant handleId of imessageAccount
	end tell
end run
