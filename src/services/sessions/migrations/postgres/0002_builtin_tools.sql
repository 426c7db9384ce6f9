-- The `builtin_tools` setting: JSON in `conversations.settings`, no table change (see
-- `../0002_builtin_tools.sql`); the step keeps the version numbers the same as SQLite's.
SELECT 1;
