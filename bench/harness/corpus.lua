-- wrk script: POST the request corpus written by bench/traffic.py (one request a line:
-- "stream<TAB>session id<TAB>body"), in order, with the token "@@NX@@" replaced by a value per pass
-- over the corpus, so every pass is new traffic whose requests still chain into conversations.
--
--   wrk -t1 -c32 -d10s --latency -s bench/harness/corpus.lua URL -- CORPUS HEADERS_FILE SALT [PATH]
--
-- HEADERS_FILE holds "name: value" lines sent on every request; SALT (0-255) keeps the tokens of one
-- run apart from every other run's. Prints nothing extra: wrk's own --latency report is parsed.

local TOKEN = "@@NX@@"
local entries = {}
local headers = {}
local path = "/v1/messages?beta=true"
local salt = 0
local index = 0
local pass = 0
local tid = 0
local threads = 0

local function split(s)
  local parts, start = {}, 1
  while true do
    local i, j = string.find(s, TOKEN, start, true)
    if not i then
      parts[#parts + 1] = string.sub(s, start)
      return parts
    end
    parts[#parts + 1] = string.sub(s, start, i - 1)
    start = j + 1
  end
end

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  local corpus, header_file = args[1], args[2]
  salt = tonumber(args[3] or "0") % 256
  path = args[4] or path
  for line in io.lines(header_file) do
    local name, value = string.match(line, "^([^:]+):%s*(.*)$")
    if name then headers[name] = value end
  end
  for line in io.lines(corpus) do
    local flag, sid, body = string.match(line, "^(%d)\t([^\t]*)\t(.*)$")
    if flag then entries[#entries + 1] = { sid = split(sid), body = split(body) } end
  end
  if #entries == 0 then error("no requests in " .. corpus) end
end

function request()
  index = index + 1
  if index > #entries then
    index = 1
    pass = pass + 1
  end
  local token = string.format("%02x%x%03x", salt, (tid or 1) % 16, pass % 4096)
  local entry = entries[index]
  headers["x-claude-code-session-id"] = table.concat(entry.sid, token)
  return wrk.format("POST", path, headers, table.concat(entry.body, token))
end
