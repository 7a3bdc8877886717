//! Waiting on a condition with a deadline: the only way the tests wait (no bare sleeps).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(50);

/// Polls `cond` until it returns `Ok(true)` or `timeout` passes. An `Err` from `cond` ends the wait
/// at once (a process that died will not come back). The timeout error names `what`.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
    wait_for(timeout, what, || Ok(cond()?.then_some(())))
}

/// Polls `probe` until it yields `Some(value)` and returns the value, or fails after `timeout`.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_once_condition_holds() {
        let mut n = 0;
        wait_until(Duration::from_secs(5), "third poll", || {
            n += 1;
            Ok(n >= 3)
        })
        .unwrap();
        assert_eq!(n, 3);
    }

    #[test]
    fn wait_until_times_out_with_the_condition_named() {
        let err =
            wait_until(Duration::from_millis(120), "the impossible", || Ok(false)).unwrap_err();
        assert!(err.to_string().contains("the impossible"), "{err}");
    }

    #[test]
    fn wait_for_stops_at_the_first_error() {
        let mut n = 0;
        let err = wait_for::<()>(Duration::from_secs(5), "x", || {
            n += 1;
            bail!("dead")
        })
        .unwrap_err();
        assert_eq!(n, 1);
        assert!(err.to_string().contains("dead"));
    }
}
