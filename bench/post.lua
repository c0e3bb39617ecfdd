-- wrk script for scenario 4 and the record benches: every request is a
-- POST with a fixed body of about BENCH_BODY_BYTES (default 256 KiB).
-- BENCH_BODY_KIND: `bytes` (default) repeats one letter, which a JSON
-- string holds without a single escape; `json` is a JSON document of
-- small objects (a quote every 7 bytes or so), as an API's request body
-- is, which is the costly case for escaping it into a record.
local size = tonumber(os.getenv("BENCH_BODY_BYTES") or "262144")
local kind = os.getenv("BENCH_BODY_KIND") or "bytes"
wrk.method = "POST"
if kind == "json" then
  local items = {}
  local len = #'{"items":[]}'
  local i = 0
  while true do
    local item = string.format(
      '{"id":%d,"name":"item number %d","price":%d.%02d,"tags":["red","large"],"in_stock":true}',
      1000 + i, i, 10 + i % 90, i % 100)
    if len + #item + 1 > size then break end
    items[#items + 1] = item
    len = len + #item + 1
    i = i + 1
  end
  wrk.body = '{"items":[' .. table.concat(items, ",") .. ']}'
  wrk.headers["Content-Type"] = "application/json"
else
  wrk.body = string.rep("b", size)
  wrk.headers["Content-Type"] = "application/octet-stream"
end
