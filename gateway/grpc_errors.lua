-- Billing's transcoded answers, in the shape every other part answers in.
--
-- The gRPC-JSON transcoder turns a failed call into its HTTP status with a
-- body of gRPC's own ({"code": <gRPC code>, "message": ..., "details": []})
-- and the call's grpc-* headers. A client of this API expects the one error
-- shape (code: the HTTP status, status: its reason, message), and no grpc-*
-- header leaves the gateway.

local REASONS = {
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [409] = "Conflict", [412] = "Precondition Failed", [429] = "Too Many Requests",
  [499] = "Client Closed Request", [500] = "Internal Server Error", [501] = "Not Implemented",
  [503] = "Service Unavailable", [504] = "Gateway Timeout",
}

-- The JSON string value of "message" as the transcoder wrote it (still
-- escaped, so it can be copied into our body as it is), or nil.
local function escaped_message(body)
  local start = body:find('"message":"', 1, true)
  if start == nil then
    return nil
  end
  local first = start + #'"message":"'
  local position = first
  while position <= #body do
    local char = body:sub(position, position)
    if char == "\\" then
      position = position + 2
    elseif char == '"' then
      return body:sub(first, position - 1)
    else
      position = position + 1
    end
  end
  return nil
end

function envoy_on_request(_handle)
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local grpc_headers = {}
  for name, _ in pairs(headers) do
    if name:sub(1, 5) == "grpc-" then
      grpc_headers[#grpc_headers + 1] = name
    end
  end
  for _, name in ipairs(grpc_headers) do
    headers:remove(name)
  end
  local status = tonumber(headers:get(":status"))
  if status == nil or status < 400 then
    return
  end
  local body = handle:body()
  local raw = body and body:getBytes(0, body:length()) or ""
  local message = escaped_message(raw) or "The billing service refused the request."
  local reason = REASONS[status] or "Error"
  local shaped = string.format('{"code":%d,"status":"%s","message":"%s"}', status, reason, message)
  if body then
    body:setBytes(shaped)
  end
  headers:replace("content-type", "application/json")
  headers:replace("content-length", tostring(#shaped))
end
