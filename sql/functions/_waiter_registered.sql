-- durable._waiter_registered(key): whether this session holds the waiters'
-- advisory lock of the queue whose hashtext is key (see _notify_ready).
-- Reads pg_locks for this backend only; locks nothing.
create or replace function durable._waiter_registered(p_key integer)
returns boolean
language sql
volatile
as $$
  select exists (
    select 1
      from pg_catalog.pg_locks l
     where l.locktype = 'advisory'
       and l.pid = pg_catalog.pg_backend_pid()
       and l.database = (select d.oid from pg_catalog.pg_database d
                          where d.datname = pg_catalog.current_database())
       and l.classid = 1685418594::oid
       and l.objid = p_key::oid
       and l.objsubid = 2
       and l.mode = 'ShareLock'
       and l.granted)
$$;
