-- Shadow-side flood: POST /charges with ids no live call has, so every
-- call takes a slot, finds nothing within `wait` and gets the fallback.
counter = 0
request = function()
  counter = counter + 1
  local headers = {}
  headers["Host"] = "payments.example"
  headers["Content-Type"] = "application/json"
  headers["x-request-id"] = "flood-" .. tostring(math.random(1, 1000000000)) .. "-" .. counter
  return wrk.format("POST", "/charges", headers, '{"amount":1250,"currency":"EUR"}')
end
