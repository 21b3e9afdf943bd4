-- A minimal Redis client on ngx_lua cosockets: enough RESP2 for the
-- nginx + Lua peer's rate limit (one EVALSHA per request), written here
-- because Debian packages no lua-resty-redis.
--
-- Each call borrows a connection from ngx_lua's per-worker pool
-- (sock:connect finds an idle one for the same host:port) and gives it
-- back with setkeepalive, so a steady load reuses a handful of
-- connections instead of paying a TCP handshake per request. A
-- connection is only pooled after a complete reply was read: one that
-- failed half-way may hold unread bytes and is closed instead.

local tcp = ngx.socket.tcp
local null = ngx.null
local byte, sub, tonumber, tostring = string.byte, string.sub, tonumber, tostring

local _M = {}
local mt = { __index = _M }

local PLUS, MINUS, COLON, DOLLAR, STAR = byte("+"), byte("-"), byte(":"), byte("$"), byte("*")

-- new{ host, port, timeout_ms, pool_size, idle_ms }: a client description;
-- sockets are opened per call (a cosocket cannot outlive its request).
function _M.new(opts)
    return setmetatable({
        host = opts.host or "127.0.0.1",
        port = opts.port or 6379,
        timeout_ms = opts.timeout_ms or 1000,
        pool_size = opts.pool_size or 64,
        idle_ms = opts.idle_ms or 60000,
    }, mt)
end

-- The command as a RESP array of bulk strings, as a table of pieces:
-- sock:send copies such a table into its buffer directly, so no Lua
-- string of the whole command is ever built.
local function encode(args)
    local n = #args
    local out = { "*", n, "\r\n" }
    local i = 4
    for k = 1, n do
        local arg = tostring(args[k])
        out[i], out[i + 1], out[i + 2], out[i + 3], out[i + 4] = "$", #arg, "\r\n", arg, "\r\n"
        i = i + 5
    end
    return out
end
_M.encode = encode

-- Reads one reply. Returns the value, or nil and a message; a third
-- result "redis" marks an error *reply* (the connection is still in a
-- clean state), as opposed to a socket or protocol error.
-- Types: +simple -> string, -error -> nil,msg,"redis", :integer -> number,
-- $bulk -> string (ngx.null when nil), *array -> table (ngx.null when nil;
-- an error inside an array becomes { err = msg }).
local function read_reply(sock)
    local line, err = sock:receive("*l")   -- strips the CRLF
    if not line then
        return nil, err
    end
    local kind = byte(line, 1)
    if kind == PLUS then
        return sub(line, 2)
    elseif kind == MINUS then
        return nil, sub(line, 2), "redis"
    elseif kind == COLON then
        return tonumber(sub(line, 2))
    elseif kind == DOLLAR or kind == STAR then
        -- A length first: -1 is the nil bulk string or nil array.
        local n = tonumber(sub(line, 2))
        if not n then
            return nil, "bad length: " .. line
        end
        if n < 0 then
            return null
        end
        if kind == DOLLAR then
            local data, rerr = sock:receive(n + 2)   -- the payload and its CRLF
            if not data then
                return nil, rerr
            end
            return sub(data, 1, n)
        end
        local items = {}
        for k = 1, n do
            local v, verr, vkind = read_reply(sock)
            if v == nil then
                if vkind ~= "redis" then
                    return nil, verr
                end
                v = { err = verr }
            end
            items[k] = v
        end
        return items
    end
    return nil, "bad reply: " .. line
end
_M.read_reply = read_reply

-- Sends one command (an array of arguments) on a pooled connection and
-- reads its reply: the value, or nil, message[, "redis"] as read_reply.
function _M:command(args)
    local sock = tcp()
    sock:settimeouts(self.timeout_ms, self.timeout_ms, self.timeout_ms)
    local ok, err = sock:connect(self.host, self.port)
    if not ok then
        return nil, "connect: " .. err
    end
    ok, err = sock:send(encode(args))
    if not ok then
        sock:close()
        return nil, "send: " .. err
    end
    local v, rerr, kind = read_reply(sock)
    if v == nil and kind ~= "redis" then
        sock:close()
        return nil, "receive: " .. rerr
    end
    -- The whole reply is read (an error reply included): the connection
    -- is clean, pool it.
    sock:setkeepalive(self.idle_ms, self.pool_size)
    return v, rerr, kind
end

-- The same, with the arguments spelled out: client:call("GET", key).
function _M:call(...)
    return self:command({ ... })
end

-- A server-side script run by its SHA1: script(client, source) returns a
-- function (keys, args) -> value | nil, err. The SHA is kept in the
-- closure (module level, per worker): the first call loads the script
-- with SCRIPT LOAD, and a NOSCRIPT reply (Redis restarted or SCRIPT FLUSH)
-- loads it again and retries once.
function _M:script(source)
    local client = self
    local sha
    local function load()
        local v, err = client:call("SCRIPT", "LOAD", source)
        if not v then
            return nil, "SCRIPT LOAD: " .. err
        end
        sha = v
        return v
    end
    return function(keys, args)
        if not sha then
            local ok, err = load()
            if not ok then
                return nil, err
            end
        end
        local cmd = { "EVALSHA", sha, #keys }
        for k = 1, #keys do cmd[#cmd + 1] = keys[k] end
        for k = 1, #args do cmd[#cmd + 1] = args[k] end
        local v, err, kind = client:command(cmd)
        if v == nil and kind == "redis" and sub(err, 1, 8) == "NOSCRIPT" then
            local ok, lerr = load()
            if not ok then
                return nil, lerr
            end
            cmd[2] = sha
            v, err = client:command(cmd)
        end
        return v, err
    end
end

return _M
