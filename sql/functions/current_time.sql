-- durable.current_time(): the clock every durable function reads.
--
-- Returns the setting durable.fake_now when it is set and not empty (tests move
-- the clock with set_config('durable.fake_now', ...)), else the transaction's now().
-- Inside the functions, which run as the schema's owner, the setting counts only
-- for a session whose user has the owner's privileges: a login role granted
-- durable_worker cannot move the clock to take runs early or expire leases.
-- A plain SQL function with every function and operator qualified, so
-- PostgreSQL inlines it into its callers (a SET clause would forbid that);
-- the role check runs only when the setting is there. Locks nothing. Raises 22007/22008 when durable.fake_now
-- is not a timestamp.
create or replace function durable.current_time()
returns timestamptz
language sql
stable
as $$
  select case
    when pg_catalog.current_setting('durable.fake_now', true) operator(pg_catalog.<>) ''
         and pg_catalog.pg_has_role(session_user, current_user, 'usage')
      then pg_catalog.current_setting('durable.fake_now', true)::pg_catalog.timestamptz
    else pg_catalog.now()
  end
$$;
