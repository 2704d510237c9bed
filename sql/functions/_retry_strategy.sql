-- durable._retry_strategy(strategy): validates a retry_strategy spawn option and
-- returns it with its defaults filled in.
--
--   {"kind": "none"}                                   retry at once
--   {"kind": "fixed", "base_seconds": 1}               wait base_seconds each time
--   {"kind": "exponential", "base_seconds": 1,         wait base_seconds * factor^(n-1)
--    "factor": 2, "max_seconds": 3600}                 after attempt n, at most max_seconds
--
-- Seconds are numbers from 0 to 31536000 (a year); factor is from 1 to 1000.
-- Locks nothing. Raises QD005 (invalid_options) naming the offending field.
create or replace function durable._retry_strategy(p_strategy jsonb)
returns jsonb
language plpgsql
immutable
as $$
declare
  v_kind text;
  v_allowed text[];
  v_key text;
  v_val jsonb;
  v_out jsonb;
begin
  if jsonb_typeof(p_strategy) is distinct from 'object' then
    raise exception 'spawn option retry_strategy must be a JSON object, got %', p_strategy::text
      using errcode = 'QD005',
            hint = 'Example: {"kind": "exponential", "base_seconds": 1, "factor": 2, "max_seconds": 3600}.';
  end if;
  if jsonb_typeof(p_strategy -> 'kind') is distinct from 'string' then
    raise exception 'spawn option retry_strategy.kind must be "none", "fixed" or "exponential", got %',
      coalesce((p_strategy -> 'kind')::text, 'nothing')
      using errcode = 'QD005';
  end if;
  v_kind := p_strategy ->> 'kind';
  case v_kind
    when 'none' then
      v_allowed := array['kind'];
      v_out := jsonb_build_object('kind', 'none');
    when 'fixed' then
      v_allowed := array['kind', 'base_seconds'];
      v_out := jsonb_build_object('kind', 'fixed', 'base_seconds', 1);
    when 'exponential' then
      v_allowed := array['kind', 'base_seconds', 'factor', 'max_seconds'];
      v_out := jsonb_build_object('kind', 'exponential', 'base_seconds', 1, 'factor', 2, 'max_seconds', 3600);
    else
      raise exception 'spawn option retry_strategy.kind must be "none", "fixed" or "exponential", got %',
        quote_literal(v_kind)
        using errcode = 'QD005';
  end case;

  for v_key, v_val in select e.key, e.value from jsonb_each(p_strategy) e loop
    if not v_key = any (v_allowed) then
      raise exception 'unknown field % in spawn option retry_strategy of kind %', quote_literal(v_key), v_kind
        using errcode = 'QD005',
              hint = format('Kind %s takes the fields %s.', v_kind, array_to_string(v_allowed, ', '));
    end if;
    continue when v_key = 'kind';
    if jsonb_typeof(v_val) is distinct from 'number'
       or (v_key = 'factor' and (v_val::numeric < 1 or v_val::numeric > 1000))
       or (v_key <> 'factor' and (v_val::numeric < 0 or v_val::numeric > 31536000)) then
      raise exception 'spawn option retry_strategy.% must be a number %, got %', v_key,
        case when v_key = 'factor' then 'from 1 to 1000' else 'of seconds from 0 to 31536000' end,
        v_val::text
        using errcode = 'QD005';
    end if;
    v_out := v_out || jsonb_build_object(v_key, v_val);
  end loop;
  return v_out;
end;
$$;
