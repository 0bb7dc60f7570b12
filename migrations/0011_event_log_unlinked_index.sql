-- The applied events that belong to no account, which the worker's monitor counts every pass
-- (`paysync_events_unlinked`): a partial index holding only them, so the count reads the index
-- instead of the whole event log. `if not exists`: on a large event log, build it first with
-- `create index concurrently` under this name.
create index if not exists event_log_unlinked_idx on event_log (id)
    where outcome = 'applied' and account_id is null;
