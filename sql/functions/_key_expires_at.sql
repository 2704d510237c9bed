-- durable._key_expires_at(held, retention, finished_at): when the key of a task
-- that ends at finished_at stops being held, or NULL when it is freed at once:
-- a task that held no key, or one spawned without key_retention_seconds
-- (retention NULL). 'Infinity' retention ("forever") gives 'infinity'.
--
-- Every statement that ends a task sets
--   key_held = key_held and key_retention is not null,
--   key_expires_at = durable._key_expires_at(key_held, key_retention, <now>)
-- so a retained key stays in the unique index t_<queue>_key until a spawn or
-- cleanup_tasks releases it after it expires (see spawn_task). A plain SQL
-- expression, inlined into its callers' plans. Locks nothing; raises nothing.
create or replace function durable._key_expires_at(
  p_held boolean,
  p_retention double precision,
  p_finished_at timestamptz)
returns timestamptz
language sql
stable
as $$
  select case
           when not p_held or p_retention is null then null
           when p_retention = 'Infinity'::double precision then 'infinity'::timestamptz
           else p_finished_at + p_retention * interval '1 second'
         end
$$;
