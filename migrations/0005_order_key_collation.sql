-- Order keys compare event ids byte by byte (as the domain's OrderKey does), not under the
-- database's collation, so every database and the Rust model agree on ties.
alter table provider_customers alter column key_event_id type text collate "C";
alter table subscriptions alter column key_event_id type text collate "C";
alter table invoices alter column key_event_id type text collate "C";
alter table payments alter column key_event_id type text collate "C";
alter table refunds alter column key_event_id type text collate "C";
alter table disputes alter column key_event_id type text collate "C";
alter table checkout_sessions alter column key_event_id type text collate "C";
