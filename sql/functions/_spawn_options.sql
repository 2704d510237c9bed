-- durable._spawn_options(options): validates spawn_task's p_options and returns
-- each option with its default filled in.
--
--   max_attempts    integer >= 1, default 5: attempts before the task fails.
--   retry_strategy  see durable._retry_strategy; default exponential 1s x2, at most 1h.
--   headers         JSON object handed to the worker with the task; default none.
--   available_at    timestamp (JSON string): not claimable before; default now.
--   parent_task_id  uuid (JSON string) of a task of the same queue: the new task
--                   is its child (cancelled when the parent fails or is
--                   cancelled). Default none.
--   max_delay       seconds (integer >= 1): the task is cancelled if no worker
--                   has started it that long after available_at. Default none.
--   max_duration    seconds (integer >= 1): the task is cancelled if it has not
--                   finished that long after its first start. Default none.
--   key_retention_seconds
--                   a number of seconds from 0 to 315360000, or the string
--                   "forever": how long a keyed task keeps its key after it
--                   ends (see spawn_task). Default 0: the key is freed when
--                   the task ends. Returned as NULL for 0, 'Infinity' for
--                   "forever"; a spawn without a key ignores it.
--
-- A known option whose value is JSON null takes its default. Locks nothing.
-- Raises QD005 (invalid_options) naming the option: an unknown key (even one
-- set to null) or a wrong type is an error, never ignored.
create or replace function durable._spawn_options(
  p_options jsonb,
  out o_max_attempts integer,
  out o_retry_strategy jsonb,
  out o_headers jsonb,
  out o_available_at timestamptz,
  out o_parent_task_id uuid,
  out o_max_delay integer,
  out o_max_duration integer,
  out o_key_retention double precision)
language plpgsql
stable
as $$
declare
  v_known constant text[] := array['max_attempts', 'retry_strategy', 'headers', 'available_at',
                                  'parent_task_id', 'max_delay', 'max_duration', 'key_retention_seconds'];
  v_key text;
  v_val jsonb;
begin
  o_max_attempts := 5;
  o_retry_strategy := '{"kind": "exponential", "base_seconds": 1, "factor": 2, "max_seconds": 3600}'::jsonb;
  if p_options is null or p_options = '{}'::jsonb then
    return;
  end if;
  if jsonb_typeof(p_options) <> 'object' then
    raise exception 'spawn options must be a JSON object, got %', left(p_options::text, 200)
      using errcode = 'QD005',
            hint = 'Known options: max_attempts, retry_strategy, headers, available_at, parent_task_id, max_delay, max_duration, key_retention_seconds.';
  end if;

  for v_key, v_val in select e.key, e.value from jsonb_each(p_options) e loop
    if not v_key = any (v_known) then
      raise exception 'unknown spawn option %', quote_literal(v_key)
        using errcode = 'QD005',
              hint = 'Known options: max_attempts, retry_strategy, headers, available_at, parent_task_id, max_delay, max_duration, key_retention_seconds.';
    end if;
    continue when jsonb_typeof(v_val) = 'null';
    case v_key
      when 'max_attempts' then
        if jsonb_typeof(v_val) <> 'number'
           or v_val::numeric <> trunc(v_val::numeric)
           or v_val::numeric < 1 or v_val::numeric > 2147483647 then
          raise exception 'spawn option max_attempts must be an integer from 1 to 2147483647, got %',
            left(v_val::text, 200)
            using errcode = 'QD005';
        end if;
        o_max_attempts := v_val::numeric::integer;
      when 'retry_strategy' then
        o_retry_strategy := durable._retry_strategy(v_val);
      when 'headers' then
        if jsonb_typeof(v_val) <> 'object' then
          raise exception 'spawn option headers must be a JSON object, got %', left(v_val::text, 200)
            using errcode = 'QD005';
        end if;
        o_headers := v_val;
      when 'available_at' then
        begin
          if jsonb_typeof(v_val) <> 'string' then
            raise exception using errcode = '22007';
          end if;
          o_available_at := (v_val #>> array[]::text[])::timestamptz;
          if not isfinite(o_available_at) then
            raise exception using errcode = '22008';
          end if;
        exception when others then
          raise exception 'spawn option available_at must be a finite timestamp string, got %',
            left(v_val::text, 200)
            using errcode = 'QD005',
                  hint = 'Example: "2030-01-02T15:04:05Z".';
        end;
      when 'parent_task_id' then
        begin
          if jsonb_typeof(v_val) <> 'string' then
            raise exception using errcode = '22P02';
          end if;
          o_parent_task_id := (v_val #>> array[]::text[])::uuid;
        exception when others then
          raise exception 'spawn option parent_task_id must be a task id (a UUID string), got %',
            left(v_val::text, 200)
            using errcode = 'QD005';
        end;
      when 'max_delay', 'max_duration' then
        if jsonb_typeof(v_val) <> 'number'
           or v_val::numeric <> trunc(v_val::numeric)
           or v_val::numeric < 1 or v_val::numeric > 315360000 then
          raise exception 'spawn option % must be a whole number of seconds from 1 to 315360000, got %',
            v_key, left(v_val::text, 200)
            using errcode = 'QD005';
        end if;
        if v_key = 'max_delay' then
          o_max_delay := v_val::numeric::integer;
        else
          o_max_duration := v_val::numeric::integer;
        end if;
      when 'key_retention_seconds' then
        if v_val = '"forever"'::jsonb then
          o_key_retention := 'Infinity';
        elsif jsonb_typeof(v_val) <> 'number' or v_val::numeric < 0 or v_val::numeric > 315360000 then
          raise exception 'spawn option key_retention_seconds must be a number of seconds from 0 to 315360000 or "forever", got %',
            left(v_val::text, 200)
            using errcode = 'QD005',
                  hint = 'Example: {"key_retention_seconds": 86400} keeps the key a day after the task ends.';
        elsif v_val::numeric > 0 then
          o_key_retention := v_val::numeric::double precision;
        end if;
    end case;
  end loop;
end;
$$;
