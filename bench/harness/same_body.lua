-- wrk script: POST one body over and over (bench/overhead.py --same-body), bounded in count as well as
-- by wrk's own duration: each thread stops after LIMIT responses (0: no count bound).
--
--   wrk -t1 -c32 -d10s --latency -s bench/harness/same_body.lua URL -- BODY HEADERS_FILE SESSION SALT LIMIT [PATH]
--
-- SESSION: "fixed" sends one session id on every request (a client re-sending the same turn: every
-- request after the first is a retry), "fresh" a new session id on every request (the same history
-- from many sessions: no retry, so nothing in memory is evidence), "none" no session header.

local body = ""
local headers = {}
local path = "/v1/messages?beta=true"
local session = "fixed"
local salt = "0"
local limit = 0
local sent = 0
local answered = 0
local tid = 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  local fh = assert(io.open(args[1], "rb"))
  body = fh:read("*a")
  fh:close()
  for line in io.lines(args[2]) do
    local name, value = string.match(line, "^([^:]+):%s*(.*)$")
    if name then headers[name] = value end
  end
  session = args[3] or session
  salt = args[4] or salt
  limit = tonumber(args[5] or "0")
  path = args[6] or path
  headers["content-type"] = "application/json"
  if session == "fixed" then headers["x-claude-code-session-id"] = "same-body-" .. salt end
end

function request()
  sent = sent + 1
  if session == "fresh" then
    headers["x-claude-code-session-id"] = string.format("fresh-%s-%d-%d", salt, tid or 1, sent)
  end
  return wrk.format("POST", path, headers, body)
end

function response(status, hdrs, resp)
  answered = answered + 1
  if limit > 0 and answered >= limit then wrk.thread:stop() end
end
