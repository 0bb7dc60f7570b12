-- Reconciliation's checkpoint per provider: the end of the last window whose listing at the
-- provider was compared with the event log in full, and when that run finished.
create table reconcile_checkpoints (
    provider      text        primary key,
    until_at      timestamptz not null,
    succeeded_at  timestamptz not null,
    report        jsonb       not null default '{}'
);
