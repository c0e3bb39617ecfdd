-- wrk script for scenario 4: every request is a POST with a fixed body.
-- The body size comes from BENCH_BODY_BYTES (default 256 KiB).
local size = tonumber(os.getenv("BENCH_BODY_BYTES") or "262144")
wrk.method = "POST"
wrk.body = string.rep("b", size)
wrk.headers["Content-Type"] = "application/octet-stream"
