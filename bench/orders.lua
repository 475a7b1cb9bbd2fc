-- wrk script: one pre-built request per request from a file (BODIES: one urlencoded
-- body per line for POST; with METHOD=GET, one path with its query string per line),
-- each of the THREADS threads taking every THREADS-th line, and a count of answers whose
-- body says code "0".
local lines = {}
local counter = 0
local stride = tonumber(os.getenv("THREADS") or "1")
ok = 0  -- global: done() reads it from every thread
thread_index = 0  -- global: setup() gives each thread its own
local threads = {}

function setup(thread)
  thread:set("thread_index", thread_index)
  thread_index = thread_index + 1
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(os.getenv("BODIES")) do
    lines[#lines + 1] = line
  end
  counter = thread_index
end

request = function()
  local line = lines[(counter % #lines) + 1]
  counter = counter + stride
  if os.getenv("METHOD") == "GET" then
    return wrk.format("GET", line)
  end
  return wrk.format("POST", os.getenv("REQUEST_PATH") or "/sign/api/order",
    {["Content-Type"] = "application/x-www-form-urlencoded"}, line)
end

response = function(status, headers, body)
  if string.find(body, '"code":"0"', 1, true) then
    ok = ok + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("ok")
  end
  io.write(string.format("ok=%d\n", total))
end
