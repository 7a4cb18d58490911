-- The gateway's memo of ext_authz's yeses, one per Envoy worker thread.
--
-- ext_authz decides every request it sees; this only spares it (and the
-- gRPC round trip, most of the gateway's cost per request) the same
-- question asked again: a token it allowed for a role is allowed again for
-- that role for as long as ext_authz said with its yes (counted from when
-- it was asked). That is what is left of its own cache bound, never past the
-- token's expiry, so a logout takes effect as soon as without the memo.
-- No's are never remembered: every 401, 403 and 503 is ext_authz's answer.
-- On a hit this sets the identity headers itself (overwriting any a client
-- sent) and marks the request; the ext_authz filter skips marked requests.
--
-- The role a route needs is its metadata `pms.authz: {required_role}`, the
-- same entry ext_authz reads; a route without one is never answered here.

local MAX_ENTRIES = 10000
local NAMESPACE = "pms.authz"  -- this filter's name: its route metadata and its marks
local memo, size = {}, 0

function envoy_on_request(handle)
  local headers = handle:headers()
  local authorization = headers:get("authorization")
  local role = handle:metadata():get("required_role")
  if authorization == nil or role == nil then
    return
  end
  local key = role .. " " .. authorization
  local entry = memo[key]
  if entry ~= nil then
    if entry.until_ms > handle:timestamp() then
      headers:replace("x-user-email", entry.user)
      headers:replace("x-user-role", entry.role)
      handle:streamInfo():dynamicMetadata():set(NAMESPACE, "hit", true)
      return
    end
    memo[key] = nil
    size = size - 1
  end
  -- Taken before ext_authz is asked, so the entry ends no later than its
  -- bound however long the upstream takes (the entry is stored on the
  -- response) and whatever ext_authz's clock says.
  local marks = handle:streamInfo():dynamicMetadata()
  marks:set(NAMESPACE, "key", key)
  marks:set(NAMESPACE, "asked_at_ms", handle:timestamp())
end

function envoy_on_response(handle)
  local metadata = handle:streamInfo():dynamicMetadata()
  local asked = metadata:get(NAMESPACE)
  if asked == nil or asked.key == nil then
    return
  end
  local grant = metadata:get("envoy.filters.http.ext_authz")
  if grant == nil or grant.reusable_for_ms == nil or grant.reusable_for_ms <= 0 then
    return
  end
  if memo[asked.key] == nil then
    if size >= MAX_ENTRIES then
      memo, size = {}, 0
    end
    size = size + 1
  end
  memo[asked.key] = {user = grant.user, role = grant.role, until_ms = asked.asked_at_ms + grant.reusable_for_ms}
end
