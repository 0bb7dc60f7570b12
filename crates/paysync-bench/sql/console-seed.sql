-- The console group's data set (crates/paysync-bench/src/rows/console.rs): a migrated schema
-- filled straight in SQL, as a busy installation's tables would look. `{accounts}`, `{events}`,
-- `{letters}`, `{deliveries}` and `{actions}` are replaced by the counts before it runs.
--
-- Ids grow with time, as the worker writes them. Hashes of the row number (`h(g)`, below)
-- spread providers, types and accounts deterministically: every run has the same data.

-- A stable pseudo-random fraction in [0, 1) of a row number and a salt.
create function pg_temp.h(g bigint, salt int) returns float8 language sql immutable as
$$ select ((hashint8(g * 31 + salt)::int8 & 2147483647)::float8 / 2147483648.0) $$;

-- Accounts, each with one Stripe customer (`cus_<n>`, `user<n>@example.com`).
insert into accounts (external_ref, created_at)
select 'acct_' || g, now() - interval '400 days' + g * (interval '399 days' / {accounts})
from generate_series(1, {accounts}) g
order by g;

insert into provider_customers (provider, customer_id, account_id, email, name,
                                key_terminal, key_created, key_rank, key_event_id)
select 'stripe', 'cus_' || substr(a.external_ref, 6), a.id,
       'user' || substr(a.external_ref, 6) || '@example.com',
       'Customer ' || substr(a.external_ref, 6),
       false, extract(epoch from a.created_at)::int8, 0, 'evt_seed_' || a.id
from accounts a;

-- One to four payments per account (one in nine failed, one in twelve partly refunded), and a
-- subscription for every other account: the account page has totals and state to derive.
insert into payments (provider, id, account_id, customer_id, status, amount, currency,
                      amount_refunded, key_terminal, key_created, key_rank, key_event_id)
select 'stripe', 'pi_' || a.id || '_' || k, a.id, 'cus_' || substr(a.external_ref, 6),
       case when (a.id + k) % 9 = 0 then 'failed' else 'succeeded' end,
       500 + ((a.id * 37 + k * 1009) % 40000), 'usd',
       case when (a.id + k) % 12 = 0 then 250 else 0 end,
       true, extract(epoch from a.created_at)::int8 + k * 86400, 3, 'evt_seed_p' || a.id || '_' || k
from accounts a
cross join lateral generate_series(1, 1 + (a.id % 4)::int) k;

insert into subscriptions (provider, id, account_id, customer_id, status, amount, currency, plan,
                           current_period_end, key_terminal, key_created, key_rank, key_event_id)
select 'stripe', 'sub_' || a.id, a.id, 'cus_' || substr(a.external_ref, 6),
       case when a.id % 10 = 0 then 'canceled' else 'active' end, 2900, 'usd', 'pro_monthly',
       extract(epoch from now() + interval '20 days')::int8, a.id % 10 = 0,
       extract(epoch from a.created_at)::int8, 2, 'evt_seed_s' || a.id
from accounts a
where a.id % 2 = 0;

-- The event log. The first nine tenths spread over the last 24 hours, the last tenth over the
-- last 5 minutes (the overview's window). Accounts are skewed (u² over the account list): the
-- first account, a large customer, has about 1 % of all events. Each body is ~1.5 KB of JSON.
create temporary table seed_types (event_type text, upto float8) on commit drop;
insert into seed_types values
  ('payment_intent.succeeded', 0.150), ('charge.succeeded', 0.300),
  ('payment_intent.created', 0.400), ('invoice.paid', 0.480),
  ('invoice.payment_succeeded', 0.560), ('invoice.created', 0.620),
  ('invoice.finalized', 0.680), ('customer.subscription.updated', 0.740),
  ('customer.updated', 0.790), ('checkout.session.completed', 0.830),
  ('customer.created', 0.860), ('customer.subscription.created', 0.890),
  ('charge.refunded', 0.910), ('payment_intent.payment_failed', 0.930),
  ('charge.failed', 0.950), ('invoice.payment_failed', 0.965),
  ('customer.subscription.deleted', 0.980), ('charge.refund.updated', 0.990),
  ('setup_intent.succeeded', 0.997), ('charge.dispute.created', 1.001);

with n as (select {events}::int8 as events, {accounts}::int8 as accounts),
e as (
  select g,
         -- 85 % Stripe, the rest the other three providers
         case when pg_temp.h(g, 1) < 0.85 then 'stripe'
              when pg_temp.h(g, 1) < 0.92 then 'square'
              when pg_temp.h(g, 1) < 0.97 then 'paypal'
              else 'authorizenet' end as provider,
         pg_temp.h(g, 2) as type_draw,
         1 + floor(n.accounts * pg_temp.h(g, 3) ^ 2)::int8 as account_n,
         case when g <= n.events * 9 / 10
              then now() - interval '24 hours'
                   + (g - 1) * ((interval '24 hours' - interval '5 minutes') / (n.events * 9 / 10))
              else now() - interval '5 minutes'
                   + (g - 1 - n.events * 9 / 10) * (interval '5 minutes' / (n.events - n.events * 9 / 10))
         end as received_at,
         (2 + floor(pg_temp.h(g, 4) * 120)) * interval '1 millisecond' as lag
  from n, generate_series(1, n.events) g
),
t as (
  select e.*,
         case e.provider
           when 'stripe' then (select st.event_type from seed_types st
                               where e.type_draw < st.upto order by st.upto limit 1)
           when 'square' then case when e.type_draw < 0.6 then 'payment.updated' else 'payment.created' end
           when 'paypal' then case when e.type_draw < 0.7 then 'PAYMENT.CAPTURE.COMPLETED' else 'CHECKOUT.ORDER.APPROVED' end
           else case when e.type_draw < 0.8 then 'net.authorize.payment.authcapture.created' else 'net.authorize.payment.refund.created' end
         end as event_type,
         case e.provider
           when 'stripe' then 'evt_1Q' || substr(md5(e.g::text), 1, 22)
           when 'paypal' then 'WH-' || upper(substr(md5(e.g::text), 1, 17)) || '-' || upper(substr(md5(e.g::text), 18, 15))
           else (md5(e.g::text || e.provider))::uuid::text
         end as event_id,
         a.id as account_id
  from e
  join accounts a on a.external_ref = 'acct_' || e.account_n
)
insert into event_log (provider, event_id, event_type, created, livemode, api_version, account_id,
                       body, received_at, processed_at, outcome, attempts)
select provider, event_id, event_type, extract(epoch from received_at)::int8 - 1, true,
       case when provider = 'stripe' then '2024-06-20' end, account_id,
       json_build_object(
         'id', event_id, 'object', 'event', 'api_version', '2024-06-20',
         'created', extract(epoch from received_at)::int8 - 1, 'livemode', true,
         'pending_webhooks', 1, 'type', event_type,
         'request', json_build_object('id', 'req_' || substr(md5(g::text || 'r'), 1, 14),
                                      'idempotency_key', md5(g::text || 'i')::uuid),
         'data', json_build_object('object', json_build_object(
           'id', 'pi_3Q' || substr(md5(g::text || 'o'), 1, 22), 'object', 'payment_intent',
           'amount', 500 + g % 40000, 'amount_received', 500 + g % 40000, 'currency', 'usd',
           'customer', 'cus_' || account_n, 'status', 'succeeded',
           'description', 'Order #' || (100000 + g) || ' (' || (1 + g % 5) || ' items)',
           'receipt_email', 'user' || account_n || '@example.com',
           'latest_charge', 'ch_3Q' || substr(md5(g::text || 'c'), 1, 22),
           'payment_method', 'pm_1Q' || substr(md5(g::text || 'm'), 1, 22),
           'payment_method_types', json_build_array('card', 'link'),
           'capture_method', 'automatic', 'confirmation_method', 'automatic',
           'client_secret', 'pi_secret_' || md5(g::text || 's'),
           'created', extract(epoch from received_at)::int8 - 3,
           'metadata', json_build_object('order_id', 'ord_' || (100000 + g),
                                         'cart', md5(g::text || 'k'), 'channel', 'web'),
           'shipping', json_build_object(
             'name', 'Customer ' || account_n, 'phone', '+49 30 ' || (1000000 + g % 8999999),
             'address', json_build_object('line1', (1 + g % 200) || ' Example Street',
                                          'line2', null, 'city', 'Berlin', 'state', null,
                                          'postal_code', lpad((10000 + g % 89999)::text, 5, '0'),
                                          'country', 'DE')),
           'charges', json_build_object('object', 'list', 'has_more', false,
                                        'url', '/v1/charges?payment_intent=pi_3Q' || substr(md5(g::text || 'o'), 1, 22),
                                        'data', json_build_array()),
           'last_payment_error', null, 'next_action', null, 'on_behalf_of', null,
           'statement_descriptor', 'PAYSYNC SHOP', 'statement_descriptor_suffix', null,
           'transfer_data', null, 'transfer_group', null, 'review', null,
           'automatic_payment_methods', json_build_object('enabled', true, 'allow_redirects', 'always'),
           'payment_method_options', json_build_object('card', json_build_object(
             'installments', null, 'mandate_options', null, 'network', null,
             'request_three_d_secure', 'automatic'))))),
       received_at, received_at + lag, 'applied', 1
from t
order by g;

-- Dead letters in five groups (about 60 / 20 / 10 / 6 / 4 %), interleaved by id as failures
-- arrive, each with the headers the worker's dead-lettering writes and the ~1 KB body it kept.
create temporary table seed_groups (n int, kind text, fingerprint text, chain text, upto float8)
  on commit drop;
insert into seed_groups values
  (0, 'provider_api_unavailable', 'a3f1c09e5b7d2e41',
   'retries exhausted after 8 attempts' || E'\n' ||
   'fetching the customer from the provider API' || E'\n' ||
   'GET https://api.stripe.com/v1/customers/cus_{n}: 503 Service Unavailable' || E'\n' ||
   'error sending request for url (https://api.stripe.com/v1/customers/cus_{n})', 0.60),
  (1, 'bad_shape', '5e0b7c22d19af803',
   'invoice.paid: data.object.lines.data[0].price is missing' || E'\n' ||
   'reading the invoice''s first line', 0.80),
  (2, 'database_rejected', 'c7d4e8a1f2093b6e',
   'applying billing changes' || E'\n' ||
   'db error: ERROR: value too long for type character varying(64)' || E'\n' ||
   'insert into subscriptions', 0.90),
  (3, 'provider_api_refused', '0f9a61b3e4c75d28',
   'fetching the subscription from the provider API' || E'\n' ||
   'GET https://api.stripe.com/v1/subscriptions/sub_{n}: 404 Not Found' || E'\n' ||
   'No such subscription: ''sub_{n}''', 0.96),
  (4, 'unsupported_payload', '9b28e5d0a6f14c73',
   'checkout.session.completed: mode "setup" is not supported', 1.01);

with l as (
  select g, pg_temp.h(g, 11) as group_draw,
         1 + floor({accounts} * pg_temp.h(g, 12))::int8 as account_n,
         now() - interval '7 days' + (g - 1) * (interval '7 days' / {letters}) as failed_at
  from generate_series(1, {letters}) g
),
d as (
  select l.*, sg.kind, sg.fingerprint, replace(sg.chain, '{n}', l.account_n::text) as chain,
         case sg.n when 1 then 'invoice.paid' when 2 then 'customer.subscription.updated'
                   when 3 then 'customer.subscription.deleted' when 4 then 'checkout.session.completed'
                   else 'charge.succeeded' end as event_type,
         'evt_1R' || substr(md5(l.g::text || 'dl'), 1, 22) as event_id
  from l
  cross join lateral (select * from seed_groups s where l.group_draw < s.upto
                      order by s.upto limit 1) sg
)
insert into dead_letters (message_key, provider, event_id, event_type, routing_key, headers, body,
                          error_kind, error_chain, fingerprint, attempts, first_failed_at,
                          last_failed_at, state, ingested_at)
select 'paysync:' || event_id || ':' || g, 'stripe', event_id, event_type,
       'stripe.' || event_type,
       jsonb_build_object(
         'paysync-received-at-ms', (extract(epoch from failed_at) * 1000)::int8 - 3600000,
         'paysync-routing-key', 'stripe.' || event_type,
         'paysync-dead-letter-key', 'paysync:' || event_id || ':' || g,
         'paysync-error-kind', kind, 'paysync-error-chain', chain,
         'paysync-fingerprint', fingerprint,
         'paysync-attempt', case when kind = 'provider_api_unavailable' then 8 else 1 end,
         'paysync-first-failure-ms', (extract(epoch from failed_at) * 1000)::int8 - 3000000,
         'paysync-last-failure-ms', (extract(epoch from failed_at) * 1000)::int8),
       convert_to(json_build_object(
         'id', event_id, 'object', 'event', 'api_version', '2024-06-20',
         'created', extract(epoch from failed_at)::int8 - 3600, 'livemode', true, 'type', event_type,
         'pending_webhooks', 1,
         'data', json_build_object('object', json_build_object(
           'id', 'in_1R' || substr(md5(g::text || 'in'), 1, 22), 'object', 'invoice',
           'customer', 'cus_' || account_n, 'subscription', 'sub_' || account_n,
           'amount_due', 2900, 'amount_paid', 2900, 'currency', 'usd', 'status', 'paid',
           'billing_reason', 'subscription_cycle', 'customer_email', 'user' || account_n || '@example.com',
           'hosted_invoice_url', 'https://invoice.stripe.com/i/acct_1Q/test_' || md5(g::text || 'h') || md5(g::text || 'u'),
           'lines', json_build_object('object', 'list', 'has_more', false, 'total_count', 1,
                                      'data', json_build_array(json_build_object(
                                        'id', 'il_1R' || substr(md5(g::text || 'l'), 1, 22),
                                        'amount', 2900, 'description', '1 × Pro (at $29.00 / month)',
                                        'period', json_build_object('start', extract(epoch from failed_at)::int8 - 2592000,
                                                                    'end', extract(epoch from failed_at)::int8)))))))::text,
         'UTF8'),
       kind, chain, fingerprint, case when kind = 'provider_api_unavailable' then 8 else 1 end,
       failed_at - interval '50 minutes', failed_at, 'open', failed_at + interval '1 second'
from d
order by g;

-- Deliveries to the three destinations, for accounts spread over the list, mostly sent.
insert into outbox_destinations (name, configured) values ('email', true), ('chat', true), ('hubspot', true);

with o as (
  select g, (array['email', 'chat', 'hubspot'])[1 + g % 3] as destination,
         pg_temp.h(g, 21) as state_draw,
         1 + floor({accounts} * pg_temp.h(g, 22))::int8 as account_n,
         now() - interval '24 hours' + (g - 1) * (interval '24 hours' / {deliveries}) as created_at
  from generate_series(1, {deliveries}) g
),
p as (
  select o.*,
         case destination when 'email' then 'email.receipt' when 'chat' then 'chat.new_customer'
                          else 'crm.deal' end as operation,
         case destination when 'email' then 'receipt' when 'chat' then 'new_customer'
                          else 'deal' end as intent,
         case when state_draw < 0.80 then 'sent' when state_draw < 0.88 then 'pending'
              when state_draw < 0.94 then 'dead' when state_draw < 0.97 then 'skipped'
              when state_draw < 0.99 then 'expired' else 'in_flight' end as state
  from o
)
insert into outbox_deliveries (destination, operation, idempotency_key, provider, intent, source_id,
                               account_id, state, attempts, next_attempt_at, last_error,
                               last_status, reason, external_ref, created_at, done_at)
select p.destination, p.operation, p.operation || ':stripe:pi_' || a.id || '_' || p.g, 'stripe',
       p.intent, 'pi_' || a.id || '_' || p.g, a.id, p.state,
       case when p.state in ('dead', 'expired') then 6 when p.state = 'pending' then 0 else 1 end,
       p.created_at + interval '30 seconds',
       case when p.state in ('dead', 'expired') then '422 Unprocessable Entity: {"message":"Property values were not valid","category":"VALIDATION_ERROR"}' end,
       case when p.state = 'sent' then 200 when p.state in ('dead', 'expired') then 422 end,
       case when p.state = 'skipped' then 'customer asked not to be contacted' end,
       case when p.state = 'sent' and p.destination = 'hubspot' then 'deal-' || (900000 + p.g) end,
       p.created_at,
       case when p.state in ('sent', 'dead', 'skipped', 'expired') then p.created_at + interval '2 seconds' end
from p
join accounts a on a.external_ref = 'acct_' || p.account_n
order by p.g;

-- The audit trail: operators' work over the last month.
insert into operator_actions (at, actor, action, target, affected, dry_run, details)
select now() - interval '30 days' + g * (interval '30 days' / {actions}),
       (array['console', 'cli', 'admin-api'])[1 + g % 3],
       (array['dlq.retry', 'dlq.archive', 'events.replay', 'outbox.retry', 'outbox.skip',
              'destination.pause'])[1 + g % 6],
       case g % 6 when 0 then 'group a3f1c09e5b7d2e41' when 1 then 'ids 3'
                  when 2 then 'stripe events of type invoice.paid' when 3 then 'dead deliveries to hubspot'
                  when 4 then 'ids 1' else 'hubspot' end,
       g % 40, g % 5 = 0, jsonb_build_object('selected', g % 40)
from generate_series(1, {actions}) g
order by g;
