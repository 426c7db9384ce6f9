-- The `truncation` setting: JSON in `conversations.settings`, no table change.
SELECT 1;
