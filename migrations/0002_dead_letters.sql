-- Dead letters, ingested from the broker dead-letter queue (ServiceControl's design): the
-- operators' working set. `message_key` makes ingestion idempotent.
create table dead_letters (
    id              bigint generated always as identity primary key,
    message_key     text        not null unique,
    provider        text,
    event_id        text,
    event_type      text,
    routing_key     text        not null,
    headers         jsonb       not null,
    body            bytea       not null,
    error_kind      text        not null,
    error_chain     text        not null,
    fingerprint     text        not null,
    attempts        integer     not null,
    first_failed_at timestamptz not null,
    last_failed_at  timestamptz not null,
    state           text        not null default 'open'
                    check (state in ('open', 'retried', 'archived')),
    redrives        integer     not null default 0,
    ingested_at     timestamptz not null default now()
);

create index dead_letters_open_fingerprint_idx on dead_letters (fingerprint) where state = 'open';
create index dead_letters_event_idx on dead_letters (provider, event_id);
