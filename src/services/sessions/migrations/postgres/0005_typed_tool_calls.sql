-- Typed tool calls (see `../0005_typed_tool_calls.sql`): that step converts calls stored in
-- OpenAI's wire form, which only SQLite files from before it hold; no PostgreSQL database
-- ever held them (the PostgreSQL store was born after it), so there is nothing to convert.
SELECT 1;
