-- Live-side egress calls: POST /charges to payments.example, each with a
-- fresh x-request-id (so each exchange is kept, as a mirrored request's is).
counter = 0
request = function()
  counter = counter + 1
  local headers = {}
  headers["Host"] = "payments.example"
  headers["Content-Type"] = "application/json"
  headers["x-request-id"] = "live-" .. tostring(math.random(1, 1000000000)) .. "-" .. counter
  return wrk.format("POST", "/charges", headers, '{"amount":1250,"currency":"EUR"}')
end
