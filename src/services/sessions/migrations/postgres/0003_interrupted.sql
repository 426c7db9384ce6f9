-- Messages gain the status `interrupted` (see `../0003_interrupted.sql`); PostgreSQL
-- changes the CHECK in place.
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('complete', 'stopped', 'failed', 'generating', 'interrupted'));
