-- The operator console's reads: an account's timeline (its events, newest first), the
-- deliveries of an account, and finding an account by a customer's email. `if not exists`: on a
-- large event log, build them first with `create index concurrently` under these names.
create index if not exists event_log_account_idx on event_log (account_id, id desc) where account_id is not null;
create index if not exists outbox_deliveries_account_idx on outbox_deliveries (account_id, id desc) where account_id is not null;
create index if not exists provider_customers_email_idx on provider_customers (lower(email)) where email is not null;
