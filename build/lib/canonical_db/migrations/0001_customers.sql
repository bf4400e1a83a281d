-- The canonical customer record: written by apps, captured by Debezium. Free text as apps send
-- it; normalising is the pipeline's job, so there are deliberately no CHECK constraints here.
create extension if not exists pgcrypto;

create table if not exists public.customers (
    id              uuid primary key default gen_random_uuid(),
    email           text,
    phone           text,
    first_name      text,
    last_name       text,
    company_name    text,
    street          text,
    city            text,
    postal_code     text,
    region          text,
    country         text,
    birth_date      date,
    lifecycle_stage text,
    plan_tier       text,
    status          text,
    timezone        text,
    language        text,
    consent_email   boolean not null default false,
    consent_sms     boolean not null default false,
    do_not_contact  boolean not null default false,
    owner_email     text,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    deleted_at      timestamptz
);

create or replace function public.touch_updated_at() returns trigger
language plpgsql as $$
begin
    if new.updated_at is not distinct from old.updated_at then
        new.updated_at := now();
    end if;
    return new;
end $$;

drop trigger if exists customers_touch_updated_at on public.customers;
create trigger customers_touch_updated_at before update on public.customers
    for each row execute function public.touch_updated_at();
