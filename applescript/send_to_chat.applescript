-- Send one text to an existing conversation, addressed by its exact chat.guid
-- (iMessage;-;+15551234567, SMS;+;chat123, any;-;... on Tahoe).
-- Data arrives only as arguments: osascript - <text> <chat guid>.
on run argv
	set messageText to item 1 of argv
	set chatGuid to item 2 of argv
	tell application "Messages"
		send messageText to chat id chatGuid
	end tell
end run
