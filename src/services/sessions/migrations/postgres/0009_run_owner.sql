-- An answer being generated names the server writing it and how long its claim holds (see
-- `../0009_run_owner.sql`): servers sharing this database refuse a second answer in a
-- conversation whose draft another live server writes, and mark a draft `interrupted` only
-- once its writer stopped renewing the claim.
ALTER TABLE messages ADD COLUMN owner TEXT;
ALTER TABLE messages ADD COLUMN lease_until BIGINT;
CREATE INDEX messages_generating ON messages (conversation_id) WHERE status = 'generating';
