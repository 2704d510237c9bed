-- durable._prepared(queue, statement, types, sql): the name of a session-level
-- prepared statement running sql for the queue, preparing it on the session's
-- first use.
--
-- Per-queue tables make every statement dynamic, and a dynamic statement is
-- planned on each call: for the hot, short statements (claims, sweeps, lookups,
-- lease updates) planning costs more than running. A prepared statement keeps
-- its plan for the session. sql may name the queue's tables as %1$I (t_), %2$I
-- (r_), %3$I (c_), %4$I (e_) and %5$I (w_); types is the parameter type list,
-- e.g. '(uuid, timestamptz)'. Callers run it with
-- execute format('execute %I(%L, ...)', name, args...), so only small values
-- should go through it (every argument is quoted into the call's text).
--
-- Callers run with plan_cache_mode = force_generic_plan, so the plan is made
-- once, and enable_seqscan = off, so it does not depend on how big the table
-- happened to be then: a plan made on an empty queue would otherwise scan it
-- forever after. Every such statement is meant to be index-driven.
--
-- The session remembers what it prepared in the setting
-- durable.prepared.<name>. PREPARE is not transactional and the setting is:
-- a statement prepared by a transaction that rolled back is found again
-- (duplicate_prepared_statement) and kept. DISCARD ALL clears both. A session
-- that runs DEALLOCATE ALL without DISCARD ALL must also call
-- select set_config(name, '', false) for the durable.prepared.* settings (or
-- reconnect). Locks nothing; raises nothing of its own.
create or replace function durable._prepared(
  p_queue_name text,
  p_statement text,
  p_types text,
  p_sql text)
returns text
language plpgsql
as $$
declare
  v_name text := 'durable_' || p_statement || '_' || md5(p_queue_name);
begin
  if current_setting('durable.prepared.' || v_name, true) is distinct from '1' then
    begin
      execute format('prepare %I %s as ', v_name, p_types)
        || format(p_sql, 't_' || p_queue_name, 'r_' || p_queue_name, 'c_' || p_queue_name,
                  'e_' || p_queue_name, 'w_' || p_queue_name);
    exception when duplicate_prepared_statement then
      null;
    end;
    perform set_config('durable.prepared.' || v_name, '1', false);
  end if;
  return v_name;
end;
$$;
