-- durable._validate_queue_name(queue): refuses a name that cannot be a queue.
--
-- A queue name is 1 to 48 bytes of ASCII letters, digits, '_' and '-', starting
-- with a letter, so 't_' || name and 'r_' || name are always valid, short
-- identifiers. Locks nothing. Raises QD001 (invalid_queue_name).
create or replace function durable._validate_queue_name(p_queue_name text)
returns void
language plpgsql
immutable
as $$
begin
  if p_queue_name is null
     or octet_length(p_queue_name) > 48
     or p_queue_name !~ '^[A-Za-z][A-Za-z0-9_-]*$' then
    raise exception 'invalid queue name %', coalesce(quote_literal(p_queue_name), 'NULL')
      using errcode = 'QD001',
            hint = 'A queue name is 1 to 48 ASCII letters, digits, "_" or "-", starting with a letter.';
  end if;
end;
$$;
