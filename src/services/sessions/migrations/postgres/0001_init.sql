-- Conversations and their messages, as SQLite's step 1 makes them (`../0001_init.sql`), in
-- PostgreSQL's types. Times are milliseconds since the Unix epoch.
CREATE TABLE conversations (
    id TEXT PRIMARY KEY NOT NULL,
    title TEXT,
    settings TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX conversations_by_update ON conversations (updated_at DESC);

CREATE TABLE messages (
    id BIGSERIAL PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content TEXT NOT NULL,
    reasoning TEXT,
    tool_calls TEXT,
    tool_call_id TEXT,
    status TEXT NOT NULL CONSTRAINT messages_status_check
        CHECK (status IN ('complete', 'stopped', 'failed', 'generating')),
    finish_reason TEXT,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    prompt_ms DOUBLE PRECISION,
    generation_ms DOUBLE PRECISION,
    created_at BIGINT NOT NULL
);

CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
