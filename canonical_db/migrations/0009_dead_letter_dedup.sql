-- One open dead letter per failure: the same stage, target, key and error, seen again (a retry,
-- a redelivery, a re-snapshot), counts on the letter it already has instead of adding a row.
-- The letter keeps the payload and source it was first seen with (a re-snapshot's copy differs
-- only in its offset); `occurrences` says how many times it was seen, `last_failed_at` when
-- last, and `attempts` sums the tries of every occurrence.
--
-- Only open letters are unique: a failure that comes back after its letter was replayed opens
-- a new letter (the replay did not fix it) and the replayed one stays as it was, as history.

alter table sync.dead_letters add column if not exists occurrences integer not null default 1;

-- What makes two letters the same failure. A letter without a key is named by nothing but its
-- payload (an unreadable record, a change the audit could not store), so its payload stands in
-- for the key: two such letters with one error are still two things that were not processed.
-- Parts are hashed, so no text can run into the next part and long errors fit in the index.
create or replace function sync.dead_letter_identity(
    p_stage text, p_target text, p_key text, p_payload jsonb, p_error text
) returns text language sql immutable parallel safe as $$
    select md5(p_stage || '|' || coalesce(p_target, '') || '|'
               || case when coalesce(p_key, '') = ''
                       then 'payload:' || md5(coalesce(p_payload::text, ''))
                       else 'key:' || md5(p_key) end
               || '|' || md5(p_error))
$$;

-- Letters already written more than once: the first of each failure keeps its payload and
-- takes the others' count, tries and last time.
with failures as (
    select min(id) as kept, array_agg(id) as ids, count(*) as seen, sum(attempts) as tries,
           max(last_failed_at) as last_failed_at
    from sync.dead_letters
    where replayed_at is null
    group by sync.dead_letter_identity(stage, target, key, payload, error)
    having count(*) > 1
), counted as (
    update sync.dead_letters d
       set occurrences = f.seen, attempts = f.tries, last_failed_at = f.last_failed_at
      from failures f
     where d.id = f.kept
)
delete from sync.dead_letters d
 using failures f
 where d.id = any(f.ids) and d.id <> f.kept;

create unique index if not exists dead_letters_open_failure
    on sync.dead_letters (sync.dead_letter_identity(stage, target, key, payload, error))
    where replayed_at is null;
