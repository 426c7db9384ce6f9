-- The `thinking_budget` setting: JSON in `conversations.settings`, no table change.
SELECT 1;
