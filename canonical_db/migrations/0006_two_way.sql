-- Two-way sync: what crmsync writes back into public.customers is marked, every applied or
-- refused change is audited once, and Debezium sends the row before each update.

-- crmsync's write-backs set sync_origin ("<system>:<correlation id>"); any other write clears
-- it, so the pipeline knows its own writes (and drops them) from the apps'.
alter table public.customers add column if not exists sync_origin text;

create or replace function public.touch_updated_at() returns trigger
language plpgsql as $$
begin
    if new.updated_at is not distinct from old.updated_at then
        new.updated_at := now();
    end if;
    if new.sync_origin is not distinct from old.sync_origin then
        new.sync_origin := null;
    end if;
    return new;
end $$;

-- The old row in every update event: the fields a writer changed are those that differ, so an
-- app's update of one field is never read as a change of the others.
alter table public.customers replica identity full;
alter table staging.crm_contacts replica identity full;
alter table staging.billing_customers replica identity full;
alter table staging.support_users replica identity full;

-- outcome: applied | rejected (the owner's or winner's value was written back) | review.
alter table sync.audit_log add column if not exists outcome text not null default 'applied';
alter table sync.audit_log add column if not exists reason text;
-- Stable per source event and field: a replayed event is audited once.
alter table sync.audit_log add column if not exists key text;
create unique index if not exists audit_log_key on sync.audit_log (key);

alter table sync.review_queue add column if not exists key text;
create unique index if not exists review_queue_key on sync.review_queue (key);
create index if not exists review_queue_open on sync.review_queue (created_at)
    where resolved_at is null;
