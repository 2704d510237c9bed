-- durable.current_time(): the clock every durable function reads.
--
-- Returns the setting durable.fake_now when it is set and not empty (tests move
-- the clock with set_config('durable.fake_now', ...)), else the transaction's now().
-- Locks nothing. Raises 22007/22008 when durable.fake_now is not a timestamp.
create or replace function durable.current_time()
returns timestamptz
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
  select coalesce(
    nullif(current_setting('durable.fake_now', true), '')::timestamptz,
    now()
  )
$$;
