-- Operator replays applied, by the id each replay message carries (`paysync-replay-id`): a second
-- delivery of the same replay (committed, then redelivered because its ack was lost) finds its
-- row and is a duplicate. Written in the replay's own transaction.
create table event_replays (
    replay_id  text        primary key,
    provider   text        not null,
    event_id   text        not null,
    applied_at timestamptz not null default now()
);
