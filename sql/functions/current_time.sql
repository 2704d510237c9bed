-- durable.current_time(): the clock every durable function reads.
--
-- Returns the setting durable.fake_now when it is set and not empty (tests move
-- the clock with set_config('durable.fake_now', ...)), else the transaction's now().
-- A plain SQL function with every function name qualified, so PostgreSQL inlines it into
-- its callers (a SET clause would forbid that). Locks nothing. Raises
-- 22007/22008 when durable.fake_now is not a timestamp.
create or replace function durable.current_time()
returns timestamptz
language sql
stable
as $$
  select coalesce(
    nullif(pg_catalog.current_setting('durable.fake_now', true), '')::pg_catalog.timestamptz,
    pg_catalog.now()
  )
$$;
