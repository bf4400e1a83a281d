-- Identity resolution: an index of who every live customer is, merges of duplicates, and what
-- the matcher decided.

-- A duplicate merged into its survivor is kept (and soft-deleted), never removed.
alter table public.customers add column if not exists merged_into uuid;

-- Why a dead letter was closed without a replay (its customer was merged, say).
alter table sync.dead_letters add column if not exists resolution text;

-- What a record made in a target said when it was linked (its values as golden fields): it
-- is written over with the golden record after, and undoing the link gives it back.
alter table sync.identity_links add column if not exists matched jsonb;

-- Pairs a person said are two people (a duplicate kept apart, a merge or a link undone):
-- never merged again by the matcher. customer_a < customer_b.
create table if not exists sync.kept_apart (
    customer_a   uuid not null,
    customer_b   uuid not null,
    decided_by   text not null,
    reason       text not null,
    decided_at   timestamptz not null default now(),
    primary key (customer_a, customer_b),
    check (customer_a < customer_b)
);

-- One row per live canonical customer, normalised for matching (crmsync.domain.identity), with
-- the blocking keys it is found under. Kept by the pipeline from the customers' change feed.
create table if not exists sync.identity_index (
    customer_id  uuid primary key,
    email        text not null default '',
    phone        text not null default '',
    first_name   text not null default '',
    last_name    text not null default '',
    company      text not null default '',
    street       text not null default '',
    postal_code  text not null default '',
    city         text not null default '',
    birth_date   text not null default '',
    keys         text[] not null,
    updated_at   timestamptz not null default now()
);

-- The blocking keys one per row, kept from the index by a trigger: a record's candidates are
-- a few primary-key lookups however many customers there are (a GIN index over `keys` made
-- the planner read the whole table once blocks grew: bench/results/identity.md).
create table if not exists sync.identity_keys (
    key          text not null,
    customer_id  uuid not null,
    primary key (key, customer_id)
);
create or replace function sync.identity_keys_sync() returns trigger language plpgsql as $$
begin
    if tg_op in ('UPDATE', 'DELETE') then
        delete from sync.identity_keys where customer_id = old.customer_id;
    end if;
    if tg_op in ('INSERT', 'UPDATE') then
        insert into sync.identity_keys (key, customer_id)
        select distinct k, new.customer_id from unnest(new.keys) k on conflict do nothing;
    end if;
    return null;
end $$;
create or replace trigger identity_keys_sync after insert or update of keys or delete
    on sync.identity_index for each row execute function sync.identity_keys_sync();

-- Every merge, with what it moved, so that a person can undo it exactly.
create table if not exists sync.merges (
    id           bigint generated always as identity primary key,
    survivor_id  uuid not null,
    loser_id     uuid not null,
    method       text not null,
    confidence   real not null,
    moved_links  jsonb not null default '[]',   -- [[system, external_id], ...] re-pointed
    archived     jsonb not null default '[]',   -- [[system, external_id], ...] the loser's duplicates
    audit_ids    jsonb not null default '[]',   -- the loser's audit rows, now the survivor's
    filled       jsonb not null default '{}',   -- survivor fields filled from the loser
    merged_by    text not null,
    merged_at    timestamptz not null default now(),
    undone_at    timestamptz,
    undone_by    text
);
create index if not exists merges_loser on sync.merges (loser_id);

-- Merge two customers in one transaction. Survivor rule: the customer created first survives
-- (then the lower id), so the record apps and targets have known longest keeps its id. The
-- survivor's empty `p_fill` fields take the loser's values (an ordinary write, so the pipeline
-- sends them on); the loser's links move to the survivor where it has no record in that
-- system (and are written over by its id), and stay with the loser where it has (the loser's
-- delete archives that duplicate); its audit rows become the survivor's; it is marked merged,
-- soft-deleted and no longer matched. One row (merge id, survivor, loser, the systems whose
-- record moved), or none when either customer is gone or merged already.
create or replace function sync.merge_customers(
    p_a uuid, p_b uuid, p_method text, p_confidence real, p_by text, p_fill text[]
) returns table (merge_id bigint, survivor_id uuid, loser_id uuid, moved_systems text[])
language plpgsql as $$
#variable_conflict use_column
declare
    survivor jsonb;
    loser jsonb;
    filled jsonb := '{}';
    moved jsonb := '[]';
    kept jsonb := '[]';
    audit_ids jsonb;
    link record;
    p_survivor uuid;
    p_loser uuid;
begin
    select ids[1], ids[2] into p_survivor, p_loser from (
        select array_agg(id order by created_at, id) ids
        from public.customers where id in (p_a, p_b)) ordered;
    select to_jsonb(c) into survivor from public.customers c where id = p_survivor for update;
    select to_jsonb(c) into loser from public.customers c where id = p_loser for update;
    if survivor is null or loser is null
       or survivor->>'deleted_at' is not null or survivor->>'merged_into' is not null
       or loser->>'deleted_at' is not null or loser->>'merged_into' is not null then
        return;
    end if;
    select coalesce(jsonb_object_agg(f, loser->f), '{}') into filled
    from unnest(p_fill) f
    where survivor->>f is null and loser->>f is not null;
    if filled <> '{}' then
        execute format(
            'update public.customers s set %s from public.customers l where s.id = $1 and l.id = $2',
            (select string_agg(format('%1$I = l.%1$I', f), ', ') from jsonb_object_keys(filled) f)
        ) using p_survivor, p_loser;
    end if;
    for link in
        select system, external_id from sync.identity_links
        where customer_id = p_loser and archived_at is null order by system
    loop
        if exists (select 1 from sync.identity_links
                   where customer_id = p_survivor and system = link.system) then
            kept := kept || jsonb_build_array(jsonb_build_array(link.system, link.external_id));
        else
            update sync.identity_links
               set customer_id = p_survivor, method = 'merge', pushed_hash = null
             where system = link.system and external_id = link.external_id;
            moved := moved || jsonb_build_array(jsonb_build_array(link.system, link.external_id));
        end if;
    end loop;
    select coalesce(jsonb_agg(id order by id), '[]') into audit_ids
    from sync.audit_log where customer_id = p_loser;
    update sync.audit_log set customer_id = p_survivor where customer_id = p_loser;
    update public.customers set merged_into = p_survivor, deleted_at = now() where id = p_loser;
    delete from sync.identity_index where customer_id = p_loser;
    -- What could not be delivered for the duplicate (a target refusing a second record for
    -- one email, say) needs no replay: closed, with the reason.
    update sync.dead_letters
       set replayed_at = now(), resolution = format('merged into %s', p_survivor)
     where key = p_loser::text and replayed_at is null;
    insert into sync.merges
        (survivor_id, loser_id, method, confidence, moved_links, archived, audit_ids, filled,
         merged_by)
    values (p_survivor, p_loser, p_method, p_confidence, moved, kept, audit_ids, filled, p_by)
    returning id into merge_id;
    insert into sync.audit_log
        (customer_id, system, field, before, after, cause, correlation_id, outcome, reason, key)
    values (p_survivor, 'identity', '*', to_jsonb(p_loser::text), to_jsonb(p_survivor::text),
            jsonb_build_object('merge', merge_id, 'by', p_by), 'merge:' || merge_id, 'merged',
            format('%s merged into %s by %s (%s, confidence %s)',
                   p_loser, p_survivor, p_by, p_method, p_confidence),
            'merge:' || merge_id);
    return query select merge_id, p_survivor, p_loser,
        array(select value->>0 from jsonb_array_elements(moved) value);
end $$;

-- Undo merge `p_merge`: the loser is live again with its links and audit rows back, and the
-- survivor's fields filled from it are cleared where they still hold the loser's value.
-- Returns the systems whose record went back to the loser.
create or replace function sync.unmerge_customers(p_merge bigint, p_by text)
returns text[] language plpgsql as $$
declare
    m sync.merges;
    f text;
begin
    select * into m from sync.merges where id = p_merge for update;
    if m.id is null then
        raise exception 'no merge %', p_merge;
    end if;
    if m.undone_at is not null then
        raise exception 'merge % was undone at %', p_merge, m.undone_at;
    end if;
    update sync.identity_links l
       set customer_id = m.loser_id, method = 'merge', pushed_hash = null
      from jsonb_array_elements(m.moved_links) moved
     where l.system = moved->>0 and l.external_id = moved->>1 and l.customer_id = m.survivor_id;
    update sync.audit_log set customer_id = m.loser_id
     where id in (select value::bigint from jsonb_array_elements_text(m.audit_ids));
    for f in select jsonb_object_keys(m.filled) loop
        execute format(
            'update public.customers set %1$I = null where id = $1 and to_jsonb(%1$I) = $2', f
        ) using m.survivor_id, m.filled->f;
    end loop;
    update public.customers set merged_into = null, deleted_at = null where id = m.loser_id;
    update sync.merges set undone_at = now(), undone_by = p_by where id = p_merge;
    insert into sync.kept_apart (customer_a, customer_b, decided_by, reason)
    values (least(m.survivor_id, m.loser_id), greatest(m.survivor_id, m.loser_id), p_by,
            format('merge %s undone', p_merge))
    on conflict do nothing;
    insert into sync.audit_log
        (customer_id, system, field, before, after, cause, correlation_id, outcome, reason, key)
    values (m.survivor_id, 'identity', '*', to_jsonb(m.survivor_id::text),
            to_jsonb(m.loser_id::text), jsonb_build_object('unmerge', p_merge, 'by', p_by),
            'unmerge:' || p_merge, 'unmerged',
            format('merge %s undone by %s: %s is its own customer again', p_merge, p_by,
                   m.loser_id),
            'unmerge:' || p_merge);
    return array(select value->>0 from jsonb_array_elements(m.moved_links) value);
end $$;
