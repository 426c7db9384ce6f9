-- Conversations and their messages. Times are milliseconds since the Unix epoch.
CREATE TABLE conversations (
    id TEXT PRIMARY KEY NOT NULL,
    -- NULL until the first user message names the conversation (or a rename does).
    title TEXT,
    -- Per-conversation settings as JSON: system prompt, temperature, top_p, max_tokens, thinking.
    settings TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE INDEX conversations_by_update ON conversations (updated_at DESC);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content TEXT NOT NULL,
    reasoning TEXT,
    -- OpenAI's `tool_calls` array, as JSON.
    tool_calls TEXT,
    -- For a tool result: the call it answers.
    tool_call_id TEXT,
    -- `generating` while a model writes it; a restart turns leftovers into `stopped`.
    status TEXT NOT NULL CHECK (status IN ('complete', 'stopped', 'failed', 'generating')),
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    prompt_ms REAL,
    generation_ms REAL,
    created_at INTEGER NOT NULL
);

CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
