-- Business facts and the webhooks we send to the business's own application
-- (docs/app-webhooks.md, docs/kpis.md).

-- When paysync first learned a state, for the business KPIs' windows. Sticky: set once, by
-- whichever event brought the state, never moved by a later or older event.
alter table subscriptions add column settled_at timestamptz;
alter table invoices add column settled_at timestamptz;
alter table payments add column settled_at timestamptz;
alter table refunds add column settled_at timestamptz;
alter table disputes add column settled_at timestamptz;
alter table checkout_sessions add column settled_at timestamptz;
-- The first time a payment was seen failed, even if its success arrived first: a payment that
-- failed and later succeeded is a recovered one.
alter table payments add column failed_at timestamptz;
-- When the dispute was first seen (existing rows: the migration's time).
alter table disputes add column first_seen_at timestamptz not null default now();

create index checkout_sessions_settled_idx on checkout_sessions (settled_at) where settled_at is not null;
create index payments_settled_idx on payments (settled_at) where settled_at is not null;
create index payments_failed_idx on payments (failed_at) where failed_at is not null;
create index refunds_settled_idx on refunds (settled_at) where settled_at is not null;
create index disputes_first_seen_idx on disputes (first_seen_at);

-- What the application was last told about each account: the projection the next change is
-- compared with, and the account's last event sequence number. The row is locked while an
-- event's transaction decides what changed, so an account's events are numbered in commit
-- order without gaps.
create table app_projections (
    account_id bigint primary key references accounts (id),
    seq        bigint not null default 0,
    state      jsonb
);

-- Every event paysync decided to tell the application, written once, in the transaction of
-- the change. `body` is the exact text that is signed and sent. `account_id` is the account
-- as told; it has no foreign key, since an account merged into another is deleted and what
-- was told about it stays history.
create table app_events (
    id         text        primary key,
    account_id bigint      not null,
    seq        bigint      not null,
    type       text        not null,
    body       text        not null,
    created_at timestamptz not null default now(),
    unique (account_id, seq)
);
create index app_events_type_created_idx on app_events (type, created_at);

-- Deliveries to destinations that keep an account's order wait for the account's earlier
-- deliveries (the claim reads this index).
create index outbox_deliveries_account_open_idx on outbox_deliveries (destination, account_id, id)
    where state in ('pending', 'in_flight') and account_id is not null;

-- An account's refunds and disputes are found through its payments (the projection reads
-- them for every account an event touches).
create index refunds_payment_idx on refunds (payment_id);
create index disputes_payment_idx on disputes (payment_id);
