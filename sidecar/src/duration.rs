//! Durations as the flags spell them (`500ms`, `20s`, `5m`, `1h`, or plain seconds), for every
//! clap value parser that takes one (`config`, `channels`).
//!
//! ```text
//! "20s" --parse_duration--> Duration (clap value_parser) --> Args / ChannelsArgs
//! ```

use std::time::Duration;

/// Parses `500ms`, `20s`, `5m`, `1h` or a plain number of seconds. The error (a `String`, as
/// clap's value parsers take it) says what a good value looks like.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 500ms, 20s or 5m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "{s:?} has an unknown unit; use ms, s, m or h (e.g. 20s)"
        )),
    }
}
