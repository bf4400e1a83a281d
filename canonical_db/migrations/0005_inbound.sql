-- The inbound side's durable state (adapters.inbound): what the targets told us and how far
-- polling has read. A webhook is acknowledged only once its events are in this inbox, so
-- nothing acknowledged is lost when the process dies before the drain has staged them.
create table if not exists sync.inbound_events (
    id           bigint generated always as identity primary key,
    system       text not null check (system in ('crm', 'billing', 'support')),
    -- The vendor's event id (HubSpot eventId, Stripe evt_..., Zendesk event id): a retried
    -- delivery, or a poll that finds an event a webhook already brought, stores nothing new.
    event_id     text not null,
    event_type   text not null,
    -- The external record the event concerns; null for events about records not mirrored
    -- (a HubSpot company, a Zendesk organization).
    object_id    text,
    payload      jsonb not null,  -- the event exactly as the vendor sent it
    source       text not null check (source in ('webhook', 'poll')),
    signature    text,            -- of the delivery that brought it (null when polled)
    received_at  timestamptz not null default now(),
    processed_at timestamptz,
    error        text,            -- why it was dead-lettered instead of staged
    unique (system, event_id)
);
create index if not exists inbound_events_pending
    on sync.inbound_events (system, id) where processed_at is null;
create index if not exists inbound_events_processed
    on sync.inbound_events (processed_at) where processed_at is not null;

-- Signatures of accepted deliveries, for replay detection. One delivery may carry many events
-- (HubSpot sends up to 100 per request), so they are remembered apart from the events, and
-- only while the timestamp tolerance lasts: an older replay is refused as stale anyway.
create table if not exists sync.inbound_signatures (
    system      text not null check (system in ('crm', 'billing', 'support')),
    signature   text not null,
    signed_at   timestamptz not null,
    received_at timestamptz not null default now(),
    primary key (system, signature)
);
create index if not exists inbound_signatures_signed_at on sync.inbound_signatures (signed_at);

-- How far incremental polling has read, per target, in the vendor's own terms (HubSpot: a
-- lastmodifieddate in epoch milliseconds; Stripe: the newest event id; Zendesk: the export's
-- after_cursor). Written in the same transaction as what the page staged.
create table if not exists sync.inbound_cursors (
    system     text primary key check (system in ('crm', 'billing', 'support')),
    cursor     text not null,
    updated_at timestamptz not null default now()
);
