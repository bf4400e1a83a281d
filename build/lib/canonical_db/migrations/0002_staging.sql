-- Mirrors of the external systems' objects, exactly as each API returns them. Written only by
-- the inbound side (webhooks, polling); captured by Debezium like the canonical table.
create schema if not exists staging;

create table if not exists staging.crm_contacts (
    external_id       text primary key,
    payload           jsonb not null,
    source_updated_at timestamptz not null,
    received_at       timestamptz not null default now(),
    deleted           boolean not null default false
);

create table if not exists staging.billing_customers (like staging.crm_contacts including all);
create table if not exists staging.support_users (like staging.crm_contacts including all);
