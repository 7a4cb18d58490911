-- wrk script for the soak: each connection creates a patient, reads it back
-- `reads` times, then pauses `pace` ms before its next create. Run with one
-- connection per thread (-t = -c): the state below is per thread.
-- Usage: wrk -tN -cN ... -s bench/soak.lua <gateway>/api/patients -- <run-id> <pace ms> <reads>
-- Not folded into create.lua: wrk parses every response body and schedules
-- every request on a timer once a script defines response() and delay(),
-- which would slow P2's client for nothing.
local threads_made = 0

function setup(thread)
  thread:set("thread_no", threads_made)
  threads_made = threads_made + 1
end

function init(args)
  run_id = args[1] or "soak"
  pace_ms = tonumber(args[2] or "0")
  reads_per_create = tonumber(args[3] or "1")
  counter = 0
  reads_left = 0
  last_id = nil
  -- wrk.format takes one header table: the creates' is -H's (the token) plus a content type.
  create_headers = {["Content-Type"] = "application/json"}
  for name, value in pairs(wrk.headers) do
    create_headers[name] = value
  end
end

function delay()
  if reads_left > 0 then
    return 0
  end
  return pace_ms
end

function request()
  if reads_left > 0 and last_id then
    reads_left = reads_left - 1
    return wrk.format("GET", wrk.path .. "/" .. last_id)
  end
  counter = counter + 1
  local body = string.format(
    '{"name":"Soak Patient %d","email":"soak-%s-%d-%d@example.com","address":"1 Soak Street",' ..
    '"dateOfBirth":"1980-01-01","registeredDate":"2024-01-01"}', counter, run_id, thread_no, counter)
  return wrk.format("POST", nil, create_headers, body)
end

function response(status, headers, body)
  if status == 201 then
    last_id = string.match(body, '"id"%s*:%s*"([^"]+)"')
    reads_left = reads_per_create
  end
end
