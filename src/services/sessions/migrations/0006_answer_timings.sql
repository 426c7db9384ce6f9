-- Answers keep the timings the chat page shows while they stream, so a reload shows the
-- same: the time to the first token (from the send, or from the start of a tool round),
-- how long the model reasoned and how many tokens its reasoning took.
--
-- Answers stored before this step have none of them (NULL) and show without them.
ALTER TABLE messages ADD COLUMN first_token_ms REAL;
ALTER TABLE messages ADD COLUMN reasoning_ms REAL;
ALTER TABLE messages ADD COLUMN reasoning_tokens INTEGER;
