-- Email collisions are decided before any target is written: each email is given to one
-- customer's records in the targets (HubSpot and Zendesk hold one record per email), and a
-- customer an app gives an email another holds waits for the identity decision (a merge, or a
-- person's review) instead of meeting a target's "already exists" (crmsync.identity).

-- Who each (normalised) email is given to in the targets. Kept by the ingest agent, in the
-- order it decides changes: the first customer to hold an email keeps it. A customer that gives
-- one up (another email, a delete, a merge) keeps the row, `released`, until the targets have
-- its records without it (each of its links archived or written since): only then is the email
-- handed to a waiting customer (`sync.settle_emails`), so a target never sees one record take an
-- email before another record lets it go.
create table if not exists sync.email_holders (
    email        text primary key,
    customer_id  uuid not null,
    since        timestamptz not null default now(),
    released_at  timestamptz
);
create index if not exists email_holders_customer on sync.email_holders (customer_id);
create index if not exists email_holders_released on sync.email_holders (released_at)
    where released_at is not null;

-- Customers whose email another customer holds: their records in the targets do not carry it
-- (a new customer is not written at all) until the email is handed to them or a person decides.
create table if not exists sync.email_waiting (
    customer_id  uuid primary key,
    email        text not null,
    holder       uuid not null,
    since        timestamptz not null default now()
);
create index if not exists email_waiting_email on sync.email_waiting (email);

-- The customers merged into one (a pair kept apart stays apart from what absorbed either).
create index if not exists customers_merged_into on public.customers (merged_into)
    where merged_into is not null;

-- Customers already synced hold their emails: the one created first where several share one.
insert into sync.email_holders (email, customer_id)
select distinct on (i.email) i.email, i.customer_id
from sync.identity_index i join public.customers c on c.id = i.customer_id
where i.email <> '' and c.deleted_at is null
order by i.email, c.created_at, c.id
on conflict do nothing;

-- Claim, in order, the email each change gives its customer (null: deleted, or no email any
-- more). Per claim: who holds the email after it (the customer itself when it got it; null for
-- none) and whether that holder is giving it up. A customer that gets an email releases the
-- others it held; one that reclaims an email it was giving up keeps it. Idempotent: a replayed
-- claim changes nothing.
create or replace function sync.claim_emails(p_customers uuid[], p_emails text[])
returns table (ord int, holder uuid, releasing boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    i int;
    c uuid;
    e text;
    h uuid;
    gone timestamptz;
    fast int[];
begin
    -- The common case (a new customer's first email, as in a snapshot) in one statement: a
    -- customer holding nothing claims an email nobody holds, each once in the batch.
    with claims as (
        select u.*, count(*) over (partition by u.customer_id) as per_customer,
               count(*) over (partition by u.email) as per_email
        from unnest(p_customers, p_emails) with ordinality as u(customer_id, email, ord)),
    fresh as (
        select * from claims k
        where k.email is not null and k.per_customer = 1 and k.per_email = 1
          and not exists (select 1 from sync.email_holders x where x.customer_id = k.customer_id)),
    taken as (
        insert into sync.email_holders (email, customer_id)
        select email, customer_id from fresh on conflict do nothing returning customer_id),
    unwaited as (
        delete from sync.email_waiting q using taken t where q.customer_id = t.customer_id)
    select coalesce(array_agg(f.ord::int), '{}') into fast
    from fresh f join taken t on t.customer_id = f.customer_id;
    return query select f, p_customers[f], false from unnest(fast) f;
    -- The rest one by one, in order.
    for i in
        select g from generate_series(1, coalesce(array_length(p_customers, 1), 0)) g
        except select unnest(fast) order by 1
    loop
        c := p_customers[i];
        e := p_emails[i];
        h := null;
        gone := null;
        if e is null then
            delete from sync.email_waiting where customer_id = c;
        else
            insert into sync.email_holders (email, customer_id) values (e, c)
            on conflict do nothing;
            select customer_id, released_at into h, gone from sync.email_holders where email = e;
            if h = c then
                if gone is not null then  -- given up, and now claimed again
                    update sync.email_holders set released_at = null where email = e;
                    gone := null;
                end if;
                delete from sync.email_waiting where customer_id = c;
            else
                insert into sync.email_waiting (customer_id, email, holder) values (c, e, h)
                on conflict (customer_id) do update set email = excluded.email,
                    holder = excluded.holder, since = now()
                where sync.email_waiting.email <> excluded.email
                   or sync.email_waiting.holder <> excluded.holder;
            end if;
        end if;
        if e is null or h = c then  -- its records carry this email alone, or none
            update sync.email_holders set released_at = now()
            where customer_id = c and email is distinct from e and released_at is null;
        end if;
        return query select i, h, gone is not null;
    end loop;
end $$;

-- Hand each email given up to a waiting customer once the targets have the records of the
-- customer giving it up without it: each of its links archived, or written since it let go.
-- The email goes to the customer it was merged into if that one waits, else to the one waiting
-- longest; one nobody waits for is free. Returns every customer waiting for a handed email,
-- whose rows are to be read again (the one handed it first), and those handed one a while ago
-- that still wait.
create or replace function sync.settle_emails() returns setof uuid
language plpgsql as $$
declare
    r record;
    heir uuid;
    waiter uuid;
begin
    for r in
        select h.email, h.customer_id, h.released_at from sync.email_holders h
        where h.released_at is not null
          and not exists (
              select 1 from unnest(array['crm', 'billing', 'support']) s(system)
              join sync.identity_links l
                on l.system = s.system and l.customer_id = h.customer_id
              where l.archived_at is null
                and (l.pushed_at is null or l.pushed_at <= h.released_at))
        order by h.released_at
        for update of h skip locked
    loop
        heir := (select merged_into from public.customers where id = r.customer_id);
        select customer_id into waiter from sync.email_waiting where email = r.email
        order by customer_id is not distinct from heir desc, since, customer_id limit 1;
        if waiter is null then
            delete from sync.email_holders where email = r.email;
            continue;
        end if;
        update sync.email_holders set customer_id = waiter, released_at = null, since = now()
        where email = r.email;
        return next waiter;
        return query select q.customer_id from sync.email_waiting q
            where q.email = r.email and q.customer_id <> waiter order by q.since, q.customer_id;
    end loop;
    -- Customers handed an email a while ago and still waiting: their recheck was lost.
    return query select q.customer_id from sync.email_waiting q
        join sync.email_holders h on h.email = q.email and h.customer_id = q.customer_id
        where h.since < now() - interval '30 seconds';
end $$;
