-- durable._grant_roles(): who may call what. THE list of every public
-- function's role is here: a new public function gets one line in it.
--
-- Three NOLOGIN roles, for users to grant to their login roles, each with the
-- one below it (durable_admin has durable_worker's rights, which has
-- durable_producer's):
--   durable_producer  spawns, cancels and reads results, queue figures and
--                     task listings
--   durable_worker    also claims, completes, fails, extends, checkpoints,
--                     sleeps, uses events and waits for work (register_waiter)
--   durable_admin     also manages queues, retries failed tasks and cleans up
-- The public functions run as the schema's owner (security definer), so no
-- role needs the tables. This creates the roles when they are missing (the
-- installing role needs CREATEROLE for that, or superuser), makes the
-- memberships, revokes every right of PUBLIC in the schema (functions,
-- internal helpers included, tables, sequences), and grants EXECUTE on each
-- listed function (every overload of the name) to its role and USAGE on the
-- schema to durable_producer. Every migration that creates functions ends by
-- calling it (sqlgen writes that line): a created function starts with
-- EXECUTE for PUBLIC, and create or replace keeps the grants.
--
-- Migrations run it under the migration lock. Roles are shared by the
-- cluster's databases: an install into another database that creates a role
-- at the same moment is not an error. Raises QD040 (roles_missing) when a
-- role is missing or lacks its membership and the installing role may not
-- create or grant it, and QD041 (function_without_role) when a public function
-- is not in the list or the list names a function that does not exist.
create or replace function durable._grant_roles()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_roles constant text[] := array[
    -- durable_producer
    ['spawn_task', 'durable_producer'],
    ['spawn_tasks', 'durable_producer'],
    ['cancel_task', 'durable_producer'],
    ['get_task_result', 'durable_producer'],
    ['list_queues', 'durable_producer'],
    ['current_time', 'durable_producer'],
    ['queue_stats', 'durable_producer'],
    ['list_tasks', 'durable_producer'],
    ['get_task', 'durable_producer'],
    -- durable_worker
    ['claim_task', 'durable_worker'],
    ['complete_run', 'durable_worker'],
    ['complete_runs', 'durable_worker'],
    ['fail_run', 'durable_worker'],
    ['extend_claim', 'durable_worker'],
    ['set_task_checkpoint_state', 'durable_worker'],
    ['get_task_checkpoint_states', 'durable_worker'],
    ['sleep_until', 'durable_worker'],
    ['emit_event', 'durable_worker'],
    ['await_event', 'durable_worker'],
    ['await_task_result', 'durable_worker'],
    ['register_waiter', 'durable_worker'],
    ['unregister_waiter', 'durable_worker'],
    -- durable_admin
    ['create_queue', 'durable_admin'],
    ['drop_queue', 'durable_admin'],
    ['ensure_queue_tables', 'durable_admin'],
    ['retry_task', 'durable_admin'],
    ['set_queue_retention', 'durable_admin'],
    ['cleanup_tasks', 'durable_admin'],
    ['cleanup_events', 'durable_admin'],
    ['cleanup_all', 'durable_admin']
  ];
  v_pair text[];
  v_role text;
  v_member text;
  v_missing text;
  v_function regprocedure;
  v_found boolean;
begin
  foreach v_role in array array['durable_producer', 'durable_worker', 'durable_admin'] loop
    if not exists (select from pg_catalog.pg_roles r where r.rolname = v_role) then
      begin
        execute format('create role %I nologin', v_role);
      exception
        when duplicate_object or unique_violation then
          null; -- an install into another database created it meanwhile
        when insufficient_privilege then
          raise exception 'role % does not exist, and role % may not create it', v_role, current_user
            using errcode = 'QD040',
                  hint = 'Install as a role with CREATEROLE, or have one create the roles first: '
                         'create role durable_producer nologin; create role durable_worker nologin; '
                         'create role durable_admin nologin; grant durable_producer to durable_worker; '
                         'grant durable_worker to durable_admin;';
      end;
    end if;
  end loop;

  foreach v_pair slice 1 in array array[['durable_producer', 'durable_worker'],
                                        ['durable_worker', 'durable_admin']] loop
    v_role := v_pair[1];
    v_member := v_pair[2];
    if not exists (select from pg_catalog.pg_auth_members m
                    where m.roleid = v_role::regrole and m.member = v_member::regrole) then
      begin
        execute format('grant %I to %I', v_role, v_member);
      exception
        when unique_violation then
          null; -- granted meanwhile by an install into another database
        when insufficient_privilege then
          raise exception 'role % is not a member of role %, and role % may not grant it', v_member, v_role, current_user
            using errcode = 'QD040',
                  hint = format('Have a role with CREATEROLE run: grant %I to %I; then install again.', v_role, v_member);
      end;
    end if;
  end loop;

  revoke all on schema durable from public;
  revoke all on all functions in schema durable from public;
  revoke all on all tables in schema durable from public;
  revoke all on all sequences in schema durable from public;
  grant usage on schema durable to durable_producer;

  foreach v_pair slice 1 in array v_roles loop
    v_found := false;
    for v_function in
      select p.oid::regprocedure from pg_catalog.pg_proc p
       where p.pronamespace = 'durable'::regnamespace and p.proname = v_pair[1]
    loop
      execute format('grant execute on function %s to %I', v_function, v_pair[2]);
      v_found := true;
    end loop;
    if not v_found then
      raise exception 'function durable.% has a role in durable._grant_roles but does not exist', v_pair[1]
        using errcode = 'QD041',
              hint = 'Remove its line from sql/functions/_grant_roles.sql, or fix the name.';
    end if;
  end loop;

  select string_agg(p.proname, ', ' order by p.proname) into v_missing
    from pg_catalog.pg_proc p
   where p.pronamespace = 'durable'::regnamespace
     and left(p.proname, 1) <> '_'
     and p.proname <> all (v_roles[:][1:1]);
  if v_missing is not null then
    raise exception 'public functions without a role: %', v_missing
      using errcode = 'QD041',
            hint = 'Give each a line in sql/functions/_grant_roles.sql (durable_producer, durable_worker '
                   'or durable_admin), run make sql/generate, and install again.';
  end if;
end;
$$;
