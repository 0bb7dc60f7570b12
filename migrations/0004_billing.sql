-- Billing and CRM read model. Accounts are the CRM records; provider objects are kept as
-- the snapshot with the greatest order key (terminal, created, status rank, event id), so the
-- final state does not depend on arrival order. No foreign keys between provider objects:
-- events arrive in any order, and a child may come before its parent.
create table accounts (
    id           bigint generated always as identity primary key,
    external_ref text unique,
    created_at   timestamptz not null default now()
);

create table provider_customers (
    provider      text    not null,
    customer_id   text    not null,
    account_id    bigint  not null references accounts (id),
    email         text,
    name          text,
    deleted       boolean not null default false,
    key_terminal  boolean not null default false,
    key_created   bigint  not null default 0,
    key_rank      smallint not null default 0,
    key_event_id  text    not null default '',
    primary key (provider, customer_id)
);
create index provider_customers_account_idx on provider_customers (account_id);

create table subscriptions (
    provider      text     not null,
    id            text     not null,
    account_id    bigint   references accounts (id),
    customer_id   text,
    status        text     not null,
    amount        bigint   not null default 0,   -- minor units
    currency      text     not null default '',  -- lowercase ISO 4217
    plan text, current_period_end bigint,
    key_terminal  boolean  not null,
    key_created   bigint   not null,
    key_rank      smallint not null,
    key_event_id  text     not null,
    primary key (provider, id)
);
create index subscriptions_account_idx on subscriptions (account_id);

create table invoices (
    provider      text     not null,
    id            text     not null,
    account_id    bigint   references accounts (id),
    customer_id   text,
    status        text     not null,
    amount        bigint   not null default 0,   -- minor units
    currency      text     not null default '',  -- lowercase ISO 4217
    subscription_id text, billing_reason text,
    key_terminal  boolean  not null,
    key_created   bigint   not null,
    key_rank      smallint not null,
    key_event_id  text     not null,
    primary key (provider, id)
);
create index invoices_account_idx on invoices (account_id);

create table payments (
    provider      text     not null,
    id            text     not null,
    account_id    bigint   references accounts (id),
    customer_id   text,
    status        text     not null,
    amount        bigint   not null default 0,   -- minor units
    currency      text     not null default '',  -- lowercase ISO 4217
    failure_code text, amount_refunded bigint not null default 0,
    key_terminal  boolean  not null,
    key_created   bigint   not null,
    key_rank      smallint not null,
    key_event_id  text     not null,
    primary key (provider, id)
);
create index payments_account_idx on payments (account_id);

create table refunds (
    provider      text     not null,
    id            text     not null,
    account_id    bigint   references accounts (id),
    customer_id   text,
    status        text     not null,
    amount        bigint   not null default 0,   -- minor units
    currency      text     not null default '',  -- lowercase ISO 4217
    payment_id text,
    key_terminal  boolean  not null,
    key_created   bigint   not null,
    key_rank      smallint not null,
    key_event_id  text     not null,
    primary key (provider, id)
);
create index refunds_account_idx on refunds (account_id);

create table disputes (
    provider      text     not null,
    id            text     not null,
    account_id    bigint   references accounts (id),
    customer_id   text,
    status        text     not null,
    amount        bigint   not null default 0,   -- minor units
    currency      text     not null default '',  -- lowercase ISO 4217
    payment_id text, reason text, evidence_due_by bigint,
    key_terminal  boolean  not null,
    key_created   bigint   not null,
    key_rank      smallint not null,
    key_event_id  text     not null,
    primary key (provider, id)
);
create index disputes_account_idx on disputes (account_id);

create table checkout_sessions (
    provider      text     not null,
    id            text     not null,
    account_id    bigint   references accounts (id),
    customer_id   text,
    status        text     not null,
    amount        bigint   not null default 0,   -- minor units
    currency      text     not null default '',  -- lowercase ISO 4217
    subscription_id text, mode text,
    key_terminal  boolean  not null,
    key_created   bigint   not null,
    key_rank      smallint not null,
    key_event_id  text     not null,
    primary key (provider, id)
);
create index checkout_sessions_account_idx on checkout_sessions (account_id);

-- CRM follow-ups, unique per (kind, source object): a redelivery cannot duplicate one.
-- Whether a task is still open is derived from its source object when an account is read.
create table tasks (
    id         bigint generated always as identity primary key,
    account_id bigint references accounts (id),
    kind       text   not null,
    source_id  text   not null,
    due_at     bigint,
    created_at timestamptz not null default now(),
    unique (kind, source_id)
);
create index tasks_account_idx on tasks (account_id);

-- Side effects to dispatch later, written in the same transaction as the state.
create table outbox (
    id            bigint generated always as identity primary key,
    account_id    bigint references accounts (id),
    kind          text   not null,
    source_id     text   not null,
    created_at    timestamptz not null default now(),
    dispatched_at timestamptz,
    unique (kind, source_id)
);
