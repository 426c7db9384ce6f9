-- Regenerating an answer keeps the earlier one as a version instead of deleting it.
--
-- `version` numbers the answers to one user message: every row after a user message (the
-- assistant's answers, tool results) belongs to one version of that message's answer.
-- `selected_version`, on user messages only, names the version shown and sent back to the
-- model. Rows stored before this step are version 1, and version 1 is selected, so every
-- conversation reads as before.
ALTER TABLE messages ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE messages ADD COLUMN selected_version INTEGER;
