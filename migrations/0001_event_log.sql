-- The idempotent event log: one row per (provider, event id) that was applied or ignored.
-- A row exists only if its processing transaction committed ("dedupe on applied, not seen").
create table event_log (
    id              bigint generated always as identity primary key,
    provider        text        not null,
    event_id        text        not null,
    event_type      text        not null,
    created         bigint      not null,             -- provider `created`, unix seconds
    livemode        boolean     not null,
    api_version     text,
    account_id      bigint,                           -- set by billing handlers
    payload         jsonb       not null,
    received_at     timestamptz not null,             -- when our receiver accepted it
    processed_at    timestamptz not null default now(),
    outcome         text        not null check (outcome in ('applied', 'ignored')),
    attempts        integer     not null,             -- the attempt that committed
    duplicates      integer     not null default 0,   -- later deliveries seen and skipped
    replays         integer     not null default 0,   -- operator replays that re-ran it
    constraint event_log_provider_event_id_key unique (provider, event_id)
);

create index event_log_type_processed_idx on event_log (event_type, processed_at desc);
create index event_log_processed_idx on event_log (processed_at desc);
