-- Event payloads are 2-5 KB of JSON, just over the size at which PostgreSQL compresses a value
-- before storing it. pglz, the default, was the largest single cost of an event-log insert in
-- the benchmark profile (docs/benchmarks.md); lz4 compresses about as well for JSON at a
-- fraction of the CPU. Existing rows keep their pglz payloads: both are read transparently.
-- Needs a PostgreSQL built with lz4 (Debian's and the official images are).
alter table event_log alter column payload set compression lz4;

-- The worker links an event-log row to its account in the same transaction, right after
-- inserting it. With free room on the page that update is HOT (no index entries, account_id
-- is not indexed); full pages made every one of them a new tuple in all four indexes.
alter table event_log set (fillfactor = 70);
