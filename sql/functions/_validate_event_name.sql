-- durable._validate_event_name(name): refuses an event name that is empty or
-- starts with '$' (reserved for the queue's own wake-ups, such as a child
-- task's end). Locks nothing. Raises QD007 (invalid_event_name).
create or replace function durable._validate_event_name(p_event_name text)
returns void
language plpgsql
immutable
as $$
begin
  if p_event_name is null or p_event_name = '' or left(p_event_name, 1) = '$' then
    raise exception 'invalid event name %', coalesce(quote_literal(p_event_name), 'NULL')
      using errcode = 'QD007',
            hint = 'An event name is non-empty text that does not start with "$".';
  end if;
end;
$$;
