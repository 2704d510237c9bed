-- durable._retry_delay(strategy, failed_attempt): seconds to wait before the
-- attempt after failed_attempt, under a strategy normalized by _retry_strategy.
-- Locks nothing, raises nothing.
create or replace function durable._retry_delay(p_strategy jsonb, p_failed_attempt integer)
returns double precision
language plpgsql
immutable
as $$
declare
  v_base double precision := coalesce((p_strategy ->> 'base_seconds')::double precision, 1);
  v_factor double precision;
  v_max double precision;
  v_exp double precision;
begin
  case p_strategy ->> 'kind'
    when 'none' then
      return 0::double precision;
    when 'fixed' then
      return v_base;
    else
      v_factor := coalesce((p_strategy ->> 'factor')::double precision, 2);
      v_max := coalesce((p_strategy ->> 'max_seconds')::double precision, 3600);
      -- Compare in logarithms so that a large attempt number cannot overflow.
      v_exp := greatest(p_failed_attempt - 1, 0)::double precision * ln(v_factor);
      if v_base = 0 then
        return 0::double precision;
      elsif v_exp + ln(v_base) >= ln(greatest(v_max, 1e-9)) then
        return v_max;
      end if;
      return v_base * exp(v_exp);
  end case;
end;
$$;
