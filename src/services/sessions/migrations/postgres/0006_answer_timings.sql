-- Answers keep their timings (see `../0006_answer_timings.sql`).
ALTER TABLE messages ADD COLUMN first_token_ms DOUBLE PRECISION;
ALTER TABLE messages ADD COLUMN reasoning_ms DOUBLE PRECISION;
ALTER TABLE messages ADD COLUMN reasoning_tokens BIGINT;
