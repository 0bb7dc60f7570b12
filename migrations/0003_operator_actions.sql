-- Operator work on dead letters: when a letter was retried or archived, and an audit trail of
-- every operator action (who, when, what, how many).
alter table dead_letters
    add column retried_at  timestamptz,
    add column archived_at timestamptz;

create index dead_letters_state_id_idx on dead_letters (state, id);

create table operator_actions (
    id        bigint generated always as identity primary key,
    at        timestamptz not null default now(),
    actor     text        not null,
    action    text        not null,
    target    text        not null,
    affected  integer     not null,
    dry_run   boolean     not null default false,
    details   jsonb       not null default '{}'::jsonb
);
