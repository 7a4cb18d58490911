-- wrk script: POST /patients with a fresh email every request.
-- Usage: wrk ... -s bench/create.lua <url> -- <run-id>
local threads_made = 0

function setup(thread)
  thread:set("thread_no", threads_made)
  threads_made = threads_made + 1
end

function init(args)
  run_id = args[1] or "run"
  counter = 0
  -- Added to wrk.headers (which carry -H, e.g. the token), not replacing them.
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"name":"Bench Patient %d","email":"bench-%s-%d-%d@example.com","address":"1 Bench Street",' ..
    '"dateOfBirth":"1980-01-01","registeredDate":"2024-01-01"}', counter, run_id, thread_no, counter)
  return wrk.format("POST", nil, nil, body)
end
