-- Engine-owned state. Postgres is the durable truth: the broker may lose its topics, these
-- tables (and Debezium's offsets beside them) may not.
create schema if not exists sync;

create table if not exists sync.identity_links (
    system       text not null check (system in ('crm', 'billing', 'support')),
    external_id  text not null,
    customer_id  uuid not null,
    method       text not null,
    confidence   real not null default 1.0,
    created_at   timestamptz not null default now(),
    -- What the adapter last wrote to that record: a replayed command with the same hash is a
    -- no-op, which keeps re-snapshots and redeliveries from costing API calls.
    pushed_hash  text,
    pushed_at    timestamptz,
    archived_at  timestamptz,
    primary key (system, external_id)
);
create unique index if not exists identity_links_customer
    on sync.identity_links (system, customer_id);

create table if not exists sync.review_queue (
    id           bigint generated always as identity primary key,
    kind         text not null,
    customer_id  uuid,
    system       text,
    proposed     jsonb not null,
    reason       text not null,
    created_at   timestamptz not null default now(),
    resolved_at  timestamptz,
    decision     jsonb,
    resolved_by  text
);

create table if not exists sync.dead_letters (
    id           bigint generated always as identity primary key,
    stage        text not null,
    target       text,
    key          text,
    payload      jsonb,
    error        text not null,
    attempts     integer not null default 1,
    source       jsonb,
    created_at   timestamptz not null default now(),
    last_failed_at timestamptz not null default now(),
    replayed_at  timestamptz
);
create index if not exists dead_letters_stage on sync.dead_letters (stage, created_at);

create table if not exists sync.audit_log (
    id             bigint generated always as identity primary key,
    customer_id    uuid not null,
    system         text not null,
    field          text not null,
    before         jsonb,
    after          jsonb,
    cause          jsonb not null,
    correlation_id text not null,
    created_at     timestamptz not null default now()
);
create index if not exists audit_log_customer on sync.audit_log (customer_id, created_at);

-- Debezium's source signalling channel (ad-hoc incremental snapshots, e.g. after the embedded
-- broker lost its topics). Columns as Debezium requires them.
create table if not exists sync.debezium_signal (
    id   varchar(64) primary key,
    type varchar(32) not null,
    data varchar(2048)
);
