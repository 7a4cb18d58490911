-- For the audit trail's log (the access log to AUDIT_LOG_PATH): who a login
-- or logout is about, which the token check cannot say on these open routes.
-- Login: the email the JSON body tries (the last "email" key, as a JSON
-- parser takes it; none when it is escaped). Logout: the subject of the
-- bearer token, unverified here; the collector believes it only when auth
-- accepted the token. Both go to dynamic metadata `pms.audit`, never upstream.

local NAMESPACE = "pms.audit"
local MAX_EMAIL = 320
local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

local function last_string_field(text, key)
  local found = nil
  for value in string.gmatch(text, '"' .. key .. '"%s*:%s*"([^"\\]*)"') do
    found = value
  end
  if found ~= nil and #found > 0 and #found <= MAX_EMAIL then
    return found
  end
  return nil
end

-- base64url without padding, as a JWT's segments are.
local function base64url_decode(data)
  local bits = string.gsub(data, ".", function(char)
    local index = string.find(ALPHABET, char, 1, true)
    if index == nil then
      return ""
    end
    local value, out = index - 1, ""
    for i = 6, 1, -1 do
      out = out .. (value % 2 ^ i - value % 2 ^ (i - 1) > 0 and "1" or "0")
    end
    return out
  end)
  return (string.gsub(bits, "%d%d%d?%d?%d?%d?%d?%d?", function(byte)
    if #byte ~= 8 then
      return ""
    end
    local value = 0
    for i = 1, 8 do
      value = value + (string.sub(byte, i, i) == "1" and 2 ^ (8 - i) or 0)
    end
    return string.char(value)
  end))
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local path = string.match(headers:get(":path") or "", "^[^?]*")
  if path == "/auth/login" then
    local body = handle:body()
    if body ~= nil and body:length() > 0 then
      local email = last_string_field(body:getBytes(0, body:length()), "email")
      if email ~= nil then
        -- Taken after body(): an object taken before the wait is out of scope after it.
        handle:streamInfo():dynamicMetadata():set(NAMESPACE, "login_email", email)
      end
    end
  elseif path == "/auth/logout" then
    local token = string.match(headers:get("authorization") or "", "^[Bb][Ee][Aa][Rr][Ee][Rr]%s+(%S+)")
    local payload = token and string.match(token, "^[^.]+%.([^.]+)%.")
    if payload ~= nil and #payload <= 4096 then
      local subject = last_string_field(base64url_decode(payload), "sub")
      if subject ~= nil then
        handle:streamInfo():dynamicMetadata():set(NAMESPACE, "token_subject", subject)
      end
    end
  end
end
