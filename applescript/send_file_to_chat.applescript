-- Send one file to an existing conversation, addressed by its exact chat.guid.
-- The file must already be inside ~/Library/Messages/ (Messages is sandboxed;
-- a file elsewhere is accepted here and then fails silently), and the path
-- must be absolute (AppleScript does not expand ~).
-- Data arrives only as arguments: osascript - <absolute path> <chat guid>.
on run argv
	set filePath to item 1 of argv
	set chatGuid to item 2 of argv
	set theFile to POSIX file filePath
	tell application "Messages"
		send theFile to chat id chatGuid
	end tell
end run
