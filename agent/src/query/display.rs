//! What human output may print of strings that come from hosts (hostnames, agent
//! ids, command lines, paths): control characters are shown escaped, so an argv or a
//! hostname can never move the cursor, clear the screen, set the terminal's title or
//! write its clipboard (OSC 52). JSON output is escaped by serde already.
use std::borrow::Cow;

/// `s` with every control character (C0, DEL, C1) and Unicode line or paragraph
/// separator written as `\xNN` or `\u{NNNN}`.
pub fn clean(s: &str) -> Cow<'_, str> {
    let bad = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            if (c as u32) < 0x100 {
                out.push_str(&format!("\\x{:02x}", c as u32));
            } else {
                out.push_str(&format!("\\u{{{:04x}}}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(clean("web-01"), "web-01");
        assert_eq!(clean("héllo wörld"), "héllo wörld");
        assert_eq!(
            clean("\x1b[2J\x1b]52;c;aGk=\x07fake\nline\r\u{9b}"),
            "\\x1b[2J\\x1b]52;c;aGk=\\x07fake\\x0aline\\x0d\\x9b"
        );
        assert_eq!(clean("a\u{2028}b"), "a\\u{2028}b");
    }
}
