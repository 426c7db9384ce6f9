-- Messages gain the status `interrupted`: an answer left `generating` by a server that did
-- not shut down (killed, out of memory, power lost), kept with the text saved before the
-- end. `stopped` keeps meaning that someone or a graceful shutdown stopped it.
--
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt with the same
-- columns and rows; its id sequence is carried over, so no deleted message's id comes back.
CREATE TABLE messages_next (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content TEXT NOT NULL,
    reasoning TEXT,
    -- OpenAI's `tool_calls` array, as JSON.
    tool_calls TEXT,
    -- For a tool result: the call it answers.
    tool_call_id TEXT,
    -- `generating` while a model writes it; a restart turns leftovers into `interrupted`.
    status TEXT NOT NULL
        CHECK (status IN ('complete', 'stopped', 'failed', 'generating', 'interrupted')),
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    prompt_ms REAL,
    generation_ms REAL,
    created_at INTEGER NOT NULL
);

INSERT INTO messages_next SELECT * FROM messages;

INSERT INTO sqlite_sequence (name, seq)
    SELECT 'messages_next', seq FROM sqlite_sequence WHERE name = 'messages'
    AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'messages_next');
UPDATE sqlite_sequence
    SET seq = max(seq, (SELECT seq FROM sqlite_sequence WHERE name = 'messages'))
    WHERE name = 'messages_next'
    AND EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'messages');

DROP TABLE messages;
ALTER TABLE messages_next RENAME TO messages;
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
