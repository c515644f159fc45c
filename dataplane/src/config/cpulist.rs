//! Linux cpulist syntax (`"0-3,8,10-11"`), as in `/sys/devices/system/cpu/online` and
//! `cpuset.cpus.effective`. Used for cores and for NIC queue ids.

use std::collections::BTreeSet;

/// Parses a cpulist into a sorted set. `Err` says what is wrong with the text.
pub fn parse(text: &str) -> Result<BTreeSet<u32>, String> {
    let mut set = BTreeSet::new();
    let text = text.trim();
    if text.is_empty() {
        return Err("is empty".into());
    }
    for part in text.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (number(lo, part)?, number(hi, part)?),
            None => {
                let n = number(part, part)?;
                (n, n)
            }
        };
        if lo > hi {
            return Err(format!("range {part:?} runs backwards"));
        }
        if hi - lo >= 4096 {
            return Err(format!("range {part:?} is implausibly large"));
        }
        set.extend(lo..=hi);
    }
    Ok(set)
}

fn number(text: &str, part: &str) -> Result<u32, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{part:?} is not a number or a range like 2-5"))
}

/// Formats a set back into cpulist syntax, ranges collapsed.
pub fn format(set: &BTreeSet<u32>) -> String {
    let mut out = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_ranges() {
        assert_eq!(
            parse("0-3,8,10-11").unwrap(),
            [0, 1, 2, 3, 8, 10, 11].into()
        );
        assert_eq!(parse(" 5 ").unwrap(), [5].into());
        assert_eq!(parse("2-2").unwrap(), [2].into());
        assert_eq!(format(&parse("0-3,8,10-11").unwrap()), "0-3,8,10-11");
        assert_eq!(format(&parse("3,1,2").unwrap()), "1-3");
    }

    #[test]
    fn rejects_junk_with_a_reason() {
        for (text, want) in [
            ("", "empty"),
            ("1-", "not a number"),
            ("a", "not a number"),
            ("5-2", "backwards"),
            ("0-100000", "implausibly"),
            ("1,,2", "not a number"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
