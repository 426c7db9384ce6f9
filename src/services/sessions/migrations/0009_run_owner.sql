-- An answer being generated names the server writing it (`owner`) and until when, in
-- milliseconds since the Unix epoch, that server's claim holds (`lease_until`).
--
-- Written by the PostgreSQL store, where several servers share one database: a second
-- answer in a conversation whose draft a live server writes is refused, and a draft is
-- marked `interrupted` only once its writer stopped renewing the claim. A SQLite file has
-- one server, which owns every run; it keeps the columns empty, so both stores have one
-- schema and an export or a copy between them needs no translation.
ALTER TABLE messages ADD COLUMN owner TEXT;
ALTER TABLE messages ADD COLUMN lease_until INTEGER;
