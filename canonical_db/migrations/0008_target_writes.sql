-- What crmsync last wrote to each target's record of a customer, per property, and when the
-- target acknowledged it: {"<property>": {"v": <value>, "at": <epoch ms>, "p": [<value>]}}.
-- "p" is a write in flight (recorded before the request; the value as a one-element list, so
-- that a cleared property is told from none). A copy of the record that comes back holding
-- one of these values, or that is not newer than the acknowledgement, reports our own write
-- (or a state our write replaced), never an edit made there. It lives here, not in the stream
-- state, so replays, re-snapshots and a lost state all see it (crmsync.domain.decide).
create table if not exists sync.target_writes (
    system       text not null check (system in ('crm', 'billing', 'support')),
    customer_id  uuid not null,
    written      jsonb not null default '{}',
    primary key (system, customer_id)
);
