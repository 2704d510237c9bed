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
-- Safety. The public functions run as the schema's owner (security definer),
-- and a prepared statement runs as whoever executes it, so the statement that
-- runs under a name must be ours: the session's user could have prepared (or
-- deallocated and re-prepared) a statement of that name to have the owner run
-- it. A session whose user has the owner's privileges could do anything
-- anyway; it trusts the setting durable.prepared.<name> that remembers what
-- it prepared (no lookup). Every other session checks pg_prepared_statements
-- on each call: the statement of that name must have exactly our text and
-- parameter types, else it is deallocated and ours prepared. The same text
-- and types mean the same statement: PostgreSQL analyses a prepared statement
-- again when the search_path differs from the one it was prepared under (the
-- functions run with pg_catalog, pg_temp), and the types are compared as
-- resolved. The texts hold no backslash, so standard_conforming_strings
-- cannot change how they parse.
-- A login role executing one of these statements itself runs it with its own
-- privileges, which include no table of the schema.
--
-- PREPARE is not transactional and the setting is: a statement prepared by a
-- transaction that rolled back is found again and kept. DISCARD ALL clears
-- both. An owner's session that runs DEALLOCATE ALL without DISCARD ALL must
-- also call select set_config(name, '', false) for the durable.prepared.*
-- settings (or reconnect); other sessions prepare again by themselves.
-- Locks nothing; raises nothing of its own.
create or replace function durable._prepared(
  p_queue_name text,
  p_statement text,
  p_types text,
  p_sql text)
returns text
language plpgsql
as $$
declare
  v_name text := 'durable_' || p_statement || '_' || pg_catalog.md5(p_queue_name);
  v_prepare text;
  v_ours boolean;
begin
  if pg_catalog.current_setting('durable.prepared.' || v_name, true) = '1'
     and pg_catalog.pg_has_role(session_user, current_user, 'usage') then
    return v_name;
  end if;
  v_prepare := pg_catalog.format('prepare %I %s as ', v_name, p_types)
    || pg_catalog.format(p_sql, 't_' || p_queue_name, 'r_' || p_queue_name, 'c_' || p_queue_name,
                         'e_' || p_queue_name, 'w_' || p_queue_name);
  select s.statement = v_prepare
         and s.parameter_types = ('{' || pg_catalog.btrim(p_types, '()') || '}')::pg_catalog.regtype[]
    into v_ours
    from pg_catalog.pg_prepared_statements s
   where s.name = v_name;
  if v_ours is null then
    execute v_prepare;
  elsif not v_ours then
    execute pg_catalog.format('deallocate %I', v_name);
    execute v_prepare;
  end if;
  perform pg_catalog.set_config('durable.prepared.' || v_name, '1', false);
  return v_name;
end;
$$;
