//! The Lua scripts the limiter runs on Redis, and their replies.
//!
//! Every script reads the time with Redis's `TIME`: windows are defined by
//! Redis's clock alone, so servers whose clocks disagree still agree on
//! which window a token belongs to. Every script also reads (and creates
//! when missing) the generation marker, so a Redis that lost its data is
//! noticed on the first reply after the loss.

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};

/// What every script starts with: `now`, Redis's time in milliseconds, and
/// `gen`, the generation marker at `KEYS[2]`, created when missing.
macro_rules! prelude {
    () => {
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gen = redis.call('GET', KEYS[2])
if not gen then
  gen = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('SET', KEYS[2], gen)
end
"#
    };
}

/// `LEASE(key, generation_key; limit, window_ms, want, min_ms)`.
///
/// Window `w = ⌊now / window_ms⌋`; the key's hash is reset when it holds
/// another window. Grants `min(want, limit − granted)` tokens, none when the
/// window ends within `min_ms` (the caller could not spend them in time).
/// Returns `{w, granted, remaining, ms_to_window_end, generation}`.
const LEASE: &str = concat!(
    prelude!(),
    r#"
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local min_ms = tonumber(ARGV[4])
local w = math.floor(now / window)
local to_end = (w + 1) * window - now
local stored = redis.call('HMGET', KEYS[1], 'w', 'g')
local granted = 0
if tonumber(stored[1]) == w then
  granted = tonumber(stored[2]) or 0
else
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'w', w, 'g', 0, 't', 0, 'r', 0)
end
local g = limit - granted
if want < g then g = want end
if g < 0 or to_end <= min_ms then g = 0 end
if g > 0 then
  redis.call('HINCRBY', KEYS[1], 'g', g)
  redis.call('HINCRBY', KEYS[1], 't', g)
end
redis.call('PEXPIRE', KEYS[1], 2 * window)
local remaining = limit - granted - g
if remaining < 0 then remaining = 0 end
return {w, g, remaining, to_end, gen}
"#
);

/// `RELEASE(key; w, n)`: gives back `n` unspent tokens of window `w`, if
/// the key's hash still holds that window. Returns the tokens given back.
const RELEASE: &str = r#"
local stored = redis.call('HMGET', KEYS[1], 'w', 'g')
if tonumber(stored[1]) ~= tonumber(ARGV[1]) then return 0 end
local n = tonumber(ARGV[2])
local g = tonumber(stored[2]) or 0
if n > g then n = g end
redis.call('HINCRBY', KEYS[1], 'g', -n)
redis.call('HINCRBY', KEYS[1], 'r', n)
return n
"#;

/// `HEARTBEAT(servers, generation_key; server, ttl_ms)`: marks the server
/// alive in the sorted set of servers, drops those silent for `ttl_ms`.
/// Returns `{active servers, generation, now_ms}`.
const HEARTBEAT: &str = concat!(
    prelude!(),
    r#"
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], 10 * ttl)
return {redis.call('ZCARD', KEYS[1]), gen, now}
"#
);

/// What `LEASE` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LeaseReply {
    /// The window, as Redis counts it: ⌊Redis time ÷ window length⌋.
    pub window: u64,
    /// Tokens granted.
    pub granted: u32,
    /// Tokens left to grant in the window, cluster-wide.
    pub remaining: u32,
    /// Milliseconds from Redis's `TIME` to the window's end.
    pub to_end_ms: u64,
    /// The generation marker.
    pub generation: String,
}

/// What `HEARTBEAT` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HeartbeatReply {
    /// Servers heard from within the time to live, this one included.
    pub servers: u32,
    /// The generation marker.
    pub generation: String,
    /// Redis's time in milliseconds since the Unix epoch.
    pub now_ms: u64,
}

/// The scripts, hashed once: each call is one `EVALSHA` (the script is
/// loaded on the first `NOSCRIPT`).
pub(super) struct Scripts {
    lease: Script,
    release: Script,
    heartbeat: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            lease: Script::new(LEASE),
            release: Script::new(RELEASE),
            heartbeat: Script::new(HEARTBEAT),
        }
    }

    pub(super) async fn lease(
        &self,
        conn: &mut ConnectionManager,
        key: &str,
        generation_key: &str,
        (limit, window_ms): (u32, u64),
        want: u32,
        min_ms: u64,
    ) -> RedisResult<LeaseReply> {
        let (window, granted, remaining, to_end_ms, generation): (u64, u32, u32, u64, String) =
            self.lease
                .key(key)
                .key(generation_key)
                .arg(limit)
                .arg(window_ms)
                .arg(want)
                .arg(min_ms)
                .invoke_async(conn)
                .await?;
        Ok(LeaseReply {
            window,
            granted,
            remaining,
            to_end_ms,
            generation,
        })
    }

    pub(super) async fn release(
        &self,
        conn: &mut ConnectionManager,
        key: &str,
        window: u64,
        tokens: u32,
    ) -> RedisResult<u32> {
        self.release
            .key(key)
            .arg(window)
            .arg(tokens)
            .invoke_async(conn)
            .await
    }

    /// Gives back many leases' tokens, pipelined: `(key, window, tokens)`.
    /// Answers the tokens Redis took back.
    pub(super) async fn release_all(
        &self,
        conn: &mut ConnectionManager,
        leases: &[(String, u64, u32)],
    ) -> RedisResult<u64> {
        if leases.is_empty() {
            return Ok(0);
        }
        let hash = self.release.prepare_invoke().load_async(conn).await?;
        let mut given_back = 0;
        for chunk in leases.chunks(512) {
            let mut pipe = redis::pipe();
            for (key, window, tokens) in chunk {
                pipe.cmd("EVALSHA")
                    .arg(&hash)
                    .arg(1)
                    .arg(key)
                    .arg(window)
                    .arg(tokens);
            }
            let answers: Vec<u64> = pipe.query_async(conn).await?;
            given_back += answers.iter().sum::<u64>();
        }
        Ok(given_back)
    }

    pub(super) async fn heartbeat(
        &self,
        conn: &mut ConnectionManager,
        servers_key: &str,
        generation_key: &str,
        server: &str,
        ttl_ms: u64,
    ) -> RedisResult<HeartbeatReply> {
        let (servers, generation, now_ms): (u32, String, u64) = self
            .heartbeat
            .key(servers_key)
            .key(generation_key)
            .arg(server)
            .arg(ttl_ms)
            .invoke_async(conn)
            .await?;
        Ok(HeartbeatReply {
            servers,
            generation,
            now_ms,
        })
    }
}
