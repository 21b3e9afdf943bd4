-- HS256 access tokens for the nginx + Lua peer: the signature (HMAC-SHA256
-- from OpenSSL's libcrypto through LuaJIT's FFI: Debian packages no
-- lua-resty-hmac or lua-resty-jwt) and the claims HAProxy's hs256
-- frontend checks (alg pinned, exp, iss, aud). Nothing is cached per token:
-- every request is verified in full, as HAProxy and the gateway do.

local ffi = require("ffi")
local cjson = require("cjson.safe")   -- decode returns nil on bad JSON instead of throwing
local b64 = require("ngx.base64")     -- resty.core: base64url without padding, in C

local ffi_new = ffi.new
local find, sub = string.find, string.sub
local type, ngx_time = type, ngx.time
local decode_base64url, json_decode = b64.decode_base64url, cjson.decode

ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *data, size_t data_len,
                    unsigned char *md, unsigned int *md_len);
int CRYPTO_memcmp(const void *a, const void *b, size_t len);
]]

-- The libcrypto nginx itself links; "crypto" needs the unversioned
-- libcrypto.so (libssl-dev), so fall back to the runtime's soname.
local function load_crypto()
    local ok, lib = pcall(ffi.load, "crypto")
    if ok then
        return lib
    end
    return ffi.load("libcrypto.so.3")
end
local crypto = load_crypto()
local SHA256 = crypto.EVP_sha256()

-- One output buffer per worker: a worker runs one Lua thread at a time and
-- nothing yields between HMAC and the comparison, so sharing is safe.
local mac = ffi_new("unsigned char[32]")
local mac_len = ffi_new("unsigned int[1]")

local _M = {}
local mt = { __index = _M }

-- new{ secret, issuer, audience }. The secret's bytes are the HMAC key as
-- they are: mint_tokens uses EncodingKey::from_secret(secret.as_bytes())
-- and HAProxy's jwt_verify the string itself, so a hex secret is *not*
-- hex-decoded.
function _M.new(opts)
    assert(type(opts.secret) == "string" and #opts.secret > 0, "JWT secret is missing")
    assert(type(opts.issuer) == "string" and #opts.issuer > 0, "issuer is missing")
    assert(type(opts.audience) == "string" and #opts.audience > 0, "audience is missing")
    return setmetatable({ secret = opts.secret, issuer = opts.issuer, audience = opts.audience }, mt)
end

-- Whether `sig` (raw bytes) is HMAC-SHA256(key, signed), in constant time:
-- CRYPTO_memcmp does not stop at the first differing byte, so the time
-- taken says nothing about how much of a forged signature was right.
local function hmac_ok(key, signed, sig)
    if #sig ~= 32 then
        return false
    end
    if crypto.HMAC(SHA256, key, #key, signed, #signed, mac, mac_len) == nil or mac_len[0] ~= 32 then
        return false
    end
    return crypto.CRYPTO_memcmp(mac, sig, 32) == 0
end
_M.hmac_ok = hmac_ok

-- Whether `aud` (a string or an array of them, RFC 7519 §4.1.3) names us.
local function audience_ok(aud, want)
    if aud == want then
        return true
    end
    if type(aud) == "table" then
        for k = 1, #aud do
            if aud[k] == want then
                return true
            end
        end
    end
    return false
end

-- Verifies a compact JWS. Returns the claims table, or nil and a reason
-- (for the error log; every failure is a 401 to the client).
-- The order is the cheap-and-safe one: structure, header (alg pinned to
-- HS256, so "none" or an RS256/HS256 confusion never reaches the MAC),
-- the MAC over the bytes as received, and only then the payload JSON.
function _M:verify(token)
    local dot1 = find(token, ".", 1, true)
    if not dot1 then
        return nil, "not a JWS"
    end
    local dot2 = find(token, ".", dot1 + 1, true)
    if not dot2 or find(token, ".", dot2 + 1, true) then
        return nil, "not a JWS"
    end

    local header_json = decode_base64url(sub(token, 1, dot1 - 1))
    local header = header_json and json_decode(header_json)
    if type(header) ~= "table" then
        return nil, "bad header"
    end
    if header.alg ~= "HS256" then
        return nil, "alg is not HS256"
    end

    local sig = decode_base64url(sub(token, dot2 + 1))
    if not sig or not hmac_ok(self.secret, sub(token, 1, dot2 - 1), sig) then
        return nil, "bad signature"
    end

    local payload_json = decode_base64url(sub(token, dot1 + 1, dot2 - 1))
    local claims = payload_json and json_decode(payload_json)
    if type(claims) ~= "table" then
        return nil, "bad payload"
    end
    local exp = claims.exp
    if type(exp) ~= "number" or exp <= ngx_time() then
        return nil, "expired"
    end
    if claims.iss ~= self.issuer then
        return nil, "wrong issuer"
    end
    if not audience_ok(claims.aud, self.audience) then
        return nil, "wrong audience"
    end
    return claims
end

return _M
