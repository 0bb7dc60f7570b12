-- The outbox dispatcher (docs/outbox.md): intents become deliveries, one per operation and
-- destination, created in the event's transaction for the destinations a dispatcher has
-- configured; the dispatcher claims them with a fenced lease and records every attempt.

-- Intents are unique per provider: two gateways may use the same object id.
alter table tasks add column provider text not null default 'stripe';
alter table tasks drop constraint tasks_kind_source_id_key;
alter table tasks add constraint tasks_provider_kind_source_key unique (provider, kind, source_id);
alter table tasks alter column provider drop default;

-- `notice`: what the message needs that the state does not keep (the address the event
-- carried, the amount, what was bought, the hosted link), filled in by later events.
alter table outbox add column provider text not null default 'stripe';
alter table outbox add column notice jsonb not null default '{}'::jsonb;
alter table outbox drop constraint outbox_kind_source_id_key;
alter table outbox add constraint outbox_provider_kind_source_key unique (provider, kind, source_id);
alter table outbox alter column provider drop default;

-- One row per destination: what a dispatcher configured, and what operators and the lane that
-- owns it see and set.
create table outbox_destinations (
    name            text primary key,
    configured      boolean     not null default false,
    -- New deliveries wait this long before their first attempt, so the other events about the
    -- same payment (sent by the provider within seconds) fill in what the message shows.
    hold_ms         integer     not null default 0,
    paused_until    timestamptz,
    pause_reason    text,
    disabled_reason text,
    forced          text        not null default 'auto'
                    check (forced in ('auto', 'open', 'closed')),
    breaker         jsonb,
    breaker_state   text        not null default 'closed',
    lane_owner      text,
    updated_at      timestamptz not null default now(),
    updated_by      text
);

-- Fencing tokens: every claim takes a new one; a completion must present the token of the
-- claim it completes.
create sequence outbox_lease_seq;

create table outbox_deliveries (
    id               bigint generated always as identity primary key,
    destination      text        not null,
    operation        text        not null,
    idempotency_key  text        not null,
    provider         text        not null,
    intent           text        not null,
    source_id        text        not null,
    account_id       bigint,
    state            text        not null default 'pending'
                     check (state in ('pending', 'in_flight', 'sent', 'dead', 'skipped', 'expired')),
    attempts         integer     not null default 0,
    next_attempt_at  timestamptz not null default now(),
    lease_token      bigint,
    lease_owner      text,
    lease_expires_at timestamptz,
    last_error       text,
    last_status      integer,
    fingerprint      text,
    reason           text,
    external_ref     text,
    created_at       timestamptz not null default now(),
    done_at          timestamptz,
    unique (destination, idempotency_key)
);
create index outbox_deliveries_due_idx on outbox_deliveries (destination, next_attempt_at)
    where state = 'pending';
create index outbox_deliveries_lease_idx on outbox_deliveries (lease_expires_at)
    where state = 'in_flight';
-- What operators look for: the deliveries that need a person. Partial, so the worker's inserts
-- (pending rows) do not maintain it.
create index outbox_deliveries_attention_idx on outbox_deliveries (destination, id)
    where state in ('dead', 'skipped', 'expired');

create table outbox_attempts (
    delivery_id   bigint      not null references outbox_deliveries (id) on delete cascade,
    attempt       integer     not null,
    lease_token   bigint      not null,
    owner         text        not null,
    started_at    timestamptz not null,
    duration_ms   integer     not null,
    outcome       text        not null,
    status        integer,
    error         text,
    retry_after_s double precision,
    primary key (delivery_id, lease_token)
);
