-- durable._uuid7(): a new id for a task or a run, a version 7 UUID (RFC
-- 9562): its first 48 bits are the Unix time in milliseconds and the other
-- 74 come from gen_random_uuid(), so that ids made later sort later.
--
-- Why. The indexes on ids (tasks_pkey, runs_pkey, runs_task) take an entry
-- for every task, run and state change. With random ids each of those lands
-- on a random page of an index that grows with the history, so once the
-- history outgrows the caches every spawn, claim and completion reads pages
-- from further away. Time-ordered ids put the entries of live work at the
-- right edge of each index, on pages already in memory, however many finished
-- tasks lie to their left.
--
-- The time is the wall clock (clock_timestamp), not durable.current_time():
-- an id orders rows, it does not date them. Ids stay unique whatever the
-- clock does (74 random bits per millisecond). Locks nothing; raises nothing.
create or replace function durable._uuid7()
returns uuid
language sql
volatile
as $$
  select pg_catalog.encode(
           -- The version nibble (byte 6, high half): gen_random_uuid's 4
           -- (0100) becomes 7 (0111); its variant bits (10) stay.
           pg_catalog.set_bit(pg_catalog.set_bit(
             pg_catalog.overlay(
               pg_catalog.uuid_send(pg_catalog.gen_random_uuid()),
               pg_catalog.substr(
                 pg_catalog.int8send(pg_catalog.floor(
                   pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint),
                 3),
               1, 6),
             52, 1), 53, 1),
           'hex')::uuid
$$;
