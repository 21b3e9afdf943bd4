-- The access phase of the nginx + Lua peer: what the gateway's full
-- pipeline (and HAProxy's hs256 frontend) checks, in the same order:
--   1. a Bearer token (401 without one);
--   2. the HS256 signature, exp, iss, aud (401; see jwt.lua);
--   3. the role "user" (403);
--   4. a per-subject token bucket in Redis, one EVALSHA (429 + Retry-After);
--   5. X-User-Id / X-User-Email / X-User-Roles from the claims, replacing
--      whatever the client sent under those names.
-- configure() runs once in init_by_lua (the master, before the fork), so a
-- missing secret stops nginx from starting instead of failing requests.

local jwt = require("jwt")
local redis = require("redis")

local ngx, ngx_var, ngx_header = ngx, ngx.var, ngx.header
local set_header = ngx.req.set_header
local exit, log, ERR, WARN = ngx.exit, ngx.log, ngx.ERR, ngx.WARN
local byte, find, sub, lower = string.byte, string.find, string.sub, string.lower
local concat, type, ceil, max, floor = table.concat, type, math.ceil, math.max, math.floor

local _M = {}

-- The bucket, in GCRA form as the gateway keeps it (crates/core/src/bucket.rs):
-- one integer per bucket, the "theoretical arrival time" (TAT, µs) at which
-- the bucket is full again. The Redis script is the gateway's own file
-- (crates/shared-state/src/bucket.lua, path in opts.bucket_script), so both
-- pay for exactly the same work: Redis's clock, one GET and one SET with a
-- TTL. KEYS[1] bucket; ARGV[1] interval µs; ARGV[2] capacity µs. Returns
-- { 1 admitted | 0 refused, µs the TAT runs ahead of now }.
local function read_script(path)
    local file = assert(io.open(path, "r"), "cannot read the bucket script " .. tostring(path))
    local text = file:read("*a")
    file:close()
    return text
end

local verifier, take, key_head, interval_us, capacity_us

-- configure{ secret, issuer, audience, redis_host, redis_port, prefix,
--            route, burst, per_second, bucket_script }
function _M.configure(opts)
    verifier = jwt.new(opts)
    local client = redis.new({ host = opts.redis_host, port = opts.redis_port })
    take = client:script(read_script(opts.bucket_script))
    -- Keys as the gateway spells them, PREFIX rl:{ROUTE:user:SUB}: the
    -- route name keeps two differently limited servers sharing a Redis
    -- (and prefix) out of each other's buckets; the braces are a Redis
    -- Cluster hash tag, so a bucket lives on one shard.
    key_head = (opts.prefix or "nginx-lua:") .. "rl:{" .. (opts.route or "full") .. ":user:"
    assert(type(opts.burst) == "number" and opts.burst >= 1, "burst must be >= 1")
    assert(type(opts.per_second) == "number" and opts.per_second > 0, "per_second must be > 0")
    -- As the gateway's Limit::of: whole microseconds per token, at least 1.
    interval_us = max(1, floor(1e6 / opts.per_second + 0.5))
    capacity_us = floor(opts.burst) * interval_us
end

-- A claim that will travel as a header value: visible ASCII or spaces, at
-- most 1 KiB (the gateway's safe_header_value). Anything else is refused
-- rather than forwarded mangled.
local function header_safe(s)
    return type(s) == "string" and #s <= 1024 and not find(s, "[^ -~]")
end

local function unauthorized(why)
    log(WARN, "401: ", why)
    ngx_header["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return exit(401)
end

function _M.check()
    -- 1. "Authorization: Bearer <token>", the scheme in any case.
    local auth = ngx_var.http_authorization
    if not auth or #auth < 8 or lower(sub(auth, 1, 7)) ~= "bearer " then
        ngx_header["WWW-Authenticate"] = "Bearer"
        return exit(401)
    end
    local token = sub(auth, 8)
    while byte(token, 1) == 32 do token = sub(token, 2) end

    -- 2. Signature and registered claims.
    local claims, why = verifier:verify(token)
    if not claims then
        return unauthorized(why)
    end
    local sub_claim, email, roles = claims.sub, claims.email, claims.roles
    if not header_safe(sub_claim) or #sub_claim == 0 or not header_safe(email) or type(roles) ~= "table" then
        return unauthorized("sub, email or roles missing or not header-safe")
    end

    -- 3. Authorization: the role "user" among the token's roles.
    local is_user = false
    for k = 1, #roles do
        local role = roles[k]
        if not header_safe(role) or find(role, ",", 1, true) then
            return unauthorized("a role is not a header-safe string")
        end
        if role == "user" then
            is_user = true
        end
    end
    if not is_user then
        return exit(403)
    end

    -- 4. The subject's bucket.
    local res, err = take({ key_head .. sub_claim .. "}" }, { interval_us, capacity_us })
    if type(res) ~= "table" or type(res[1]) ~= "number" or type(res[2]) ~= "number" then
        -- Like the gateway's `on_store_error: deny` (its default, `local`,
        -- falls back to in-process buckets, which this peer has not).
        log(ERR, "rate-limit store: ", err or "unexpected reply")
        ngx_header["Retry-After"] = "1"
        return exit(503)
    end
    if res[1] ~= 1 then
        -- Until one more token fits: ahead + interval - capacity, in whole
        -- seconds rounded up, at least 1.
        ngx_header["Retry-After"] = max(1, ceil((res[2] + interval_us - capacity_us) / 1e6))
        return exit(429)
    end

    -- 5. Identity for the upstream. set_header replaces every header of
    -- that name the client sent (any case), so this is also the strip;
    -- nginx already ignores X_User_Id / X.User.Id spellings (names with
    -- "_" or "." are invalid under its default ignore_invalid_headers).
    set_header("X-User-Id", sub_claim)
    set_header("X-User-Email", email)
    set_header("X-User-Roles", concat(roles, ","))
end

return _M
