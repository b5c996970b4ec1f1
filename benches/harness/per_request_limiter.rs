//! The usual shared limiter, for contrast with `RedisLimiter`: one Redis
//! script call per request (a fixed-window counter: `INCR`, and `PEXPIRE`
//! on a window's first request), as Kong's `redis` policy and Envoy's
//! ratelimit service do.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use tm_auth::{Admission, KeyId, RateLimit, RateLimitStatus, RateLimiter};

const COUNT: &str = r#"
local c = redis.call('INCR', KEYS[1])
if c == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {c, redis.call('PTTL', KEYS[1])}
"#;

pub(crate) struct PerRequestLimiter {
    conn: ConnectionManager,
    script: Arc<Script>,
    prefix: String,
}

impl PerRequestLimiter {
    pub(crate) async fn connect(url: &str) -> Result<PerRequestLimiter, redis::RedisError> {
        let conn = ConnectionManager::new(redis::Client::open(url)?).await?;
        Ok(PerRequestLimiter {
            conn,
            script: Arc::new(Script::new(COUNT)),
            prefix: format!("tm-auth-eval:{}", std::process::id()),
        })
    }
}

impl RateLimiter for PerRequestLimiter {
    fn admit(&self, id: KeyId, limit: RateLimit, now_ms: u64) -> Admission {
        let mut conn = self.conn.clone();
        let script = Arc::clone(&self.script);
        let window = limit.window().as_millis() as u64;
        let key = format!("{}:{id}:{}", self.prefix, now_ms / window);
        Admission::Later(Box::pin(async move {
            let answer: Result<(u64, i64), _> =
                script.key(key).arg(window).invoke_async(&mut conn).await;
            let (count, ttl) = answer.map_err(|_| Duration::from_secs(1))?;
            let reset = Duration::from_millis(ttl.max(0) as u64);
            if count <= u64::from(limit.requests()) {
                Ok(RateLimitStatus::new(
                    limit.requests(),
                    limit.requests() - count as u32,
                    reset,
                ))
            } else {
                Err(reset)
            }
        }))
    }
}
