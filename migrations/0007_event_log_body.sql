-- New events keep their body as `json`: the exact text the provider sent, validated on the way
-- in but not converted. Converting every 2-5 KB body to jsonb was the largest single PostgreSQL
-- cost of an event once the worker wrote its state with set-based statements
-- (docs/benchmarks.md).
--
-- Expand step: `payload` (jsonb) stays, nullable now, for the rows written before this release
-- and by a previous release still running during a rolling upgrade; readers take `body` when it
-- is set, else `payload`. A later release may copy `payload` into `body` and drop it (contract).
-- Metadata only: no table rewrite, no scan (the check is NOT VALID: old rows all have a payload).
alter table event_log add column body json;
alter table event_log alter column body set compression lz4;
alter table event_log alter column payload drop not null;
alter table event_log add constraint event_log_body_or_payload
    check (body is not null or payload is not null) not valid;
