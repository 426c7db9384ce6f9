-- Regenerating keeps the earlier answer as a version (see `../0007_answer_versions.sql`).
ALTER TABLE messages ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE messages ADD COLUMN selected_version BIGINT;
