-- durable._planned_rows(query): the number of rows the planner expects the
-- query to return (EXPLAIN's top "Plan Rows"), without running it.
--
-- queue_stats estimates a large queue's finished tasks with it. The caller
-- builds the query with format() and %L for every value, so that the planner
-- sees literals and uses its statistics for them. Volatile: PostgreSQL allows
-- EXPLAIN only in volatile functions. Locks nothing beyond planning; raises
-- what EXPLAIN raises.
create or replace function durable._planned_rows(p_query text)
returns double precision
language plpgsql
as $$
declare
  v_plan json;
begin
  execute 'explain (format json) ' || p_query into v_plan;
  return (v_plan -> 0 -> 'Plan' ->> 'Plan Rows')::double precision;
end;
$$;
