//! The protocol's rules for names and for text people read as a name (display names, topics),
//! in one place: REST handlers and the operator's resources check here. Plain functions, no
//! I/O; each error names the field in the protocol's words.

use std::sync::LazyLock;

use regex::Regex;

/// Control characters (Unicode Cc) and explicit directional formatting (embeddings,
/// overrides, isolates), which reorder the text around them so that a name can pass for
/// another (`"evil\u{202E}moc.elgoog"`). As a regex character class body.
macro_rules! unshown {
    () => {
        r"\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
    };
}

/// What leaves no mark: white space, zero-width and other format characters, variation
/// selectors, and the letters that render as blank (Hangul fillers, the blank Braille cell).
macro_rules! blank {
    () => {
        r"\s\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2028-\u202f\u205f-\u206f\u2800\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
    };
}

/// The patterns below are both the server's rules and the OpenAPI document's: the same text
/// reads the same in Rust's `regex`, ECMAScript and Python (`\uXXXX`, classes, anchors).
/// A username: 3-32 of `[a-z0-9_.-]`.
pub const USERNAME: &str = "^[a-z0-9_.-]{3,32}$";
/// A room name: 1-64 of `[a-z0-9_-]`.
pub const ROOM_NAME: &str = "^[a-z0-9_-]{1,64}$";
/// Text with no control or directional characters and something visible, unanchored.
macro_rules! shown {
    () => {
        concat!(
            "[^",
            unshown!(),
            "]*[^",
            unshown!(),
            blank!(),
            "][^",
            unshown!(),
            "]*"
        )
    };
}

/// A display name: no control or directional characters, and something visible.
pub const SHOWN_TEXT: &str = concat!("^", shown!(), "$");
/// A topic: as a display name, or empty.
pub const SHOWN_TEXT_OR_EMPTY: &str = concat!("^(", shown!(), ")?$");
/// Search text: no control characters, and something that is not white space.
pub const SEARCH_TEXT: &str =
    r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$";
/// A message body: something that is not white space (searched for, not anchored).
pub const NOT_BLANK: &str = r"\S";

fn regex(pattern: &'static str) -> Regex {
    Regex::new(pattern).expect("the patterns are valid")
}

static SHOWN: LazyLock<Regex> = LazyLock::new(|| regex(SHOWN_TEXT));

/// A username: 3-32 of `[a-z0-9_.-]` ([`USERNAME`]).
pub fn username(name: &str) -> bool {
    (3..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// A room name: 1-64 of `[a-z0-9_-]` ([`ROOM_NAME`]).
pub fn room_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b))
}

fn directional(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Text shown as a name or a topic ([`SHOWN_TEXT`], or [`SHOWN_TEXT_OR_EMPTY`] when empty is
/// allowed); the error names `field` and the rule broken.
pub fn shown_text(field: &str, text: &str, allow_empty: bool) -> Result<(), String> {
    if text.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    if text.chars().any(directional) {
        return Err(format!(
            "{field} must not contain bidirectional override characters (U+202A-202E, U+2066-2069)"
        ));
    }
    let empty_allowed = allow_empty && text.is_empty();
    if !empty_allowed && !SHOWN.is_match(text) {
        return Err(format!("{field} must contain a visible character"));
    }
    Ok(())
}

/// Search text ([`SEARCH_TEXT`]).
pub fn search_text(text: &str) -> Result<(), String> {
    if text.chars().any(char::is_control) {
        return Err("q must not contain control characters".into());
    }
    if text.trim().is_empty() {
        return Err("q must not be empty".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_protocol() {
        for ok in ["bob", "alice_1", "a.b-c", &"x".repeat(32)] {
            assert!(username(ok), "{ok}");
        }
        for bad in ["ab", "Alice", "al ice", "al/ice", "ålice", &"x".repeat(33)] {
            assert!(!username(bad), "{bad}");
        }
    }

    #[test]
    fn room_names_follow_the_protocol() {
        for ok in ["g", "general", "team-a_1", &"x".repeat(64)] {
            assert!(room_name(ok), "{ok}");
        }
        for bad in ["", "General", "a b", "a.b", &"x".repeat(65)] {
            assert!(!room_name(bad), "{bad}");
        }
    }

    #[test]
    fn shown_text_refuses_what_hides_or_reorders_text() {
        for ok in [
            "Alice",
            "Zoë",
            "李小龙",
            "🎉",
            "a\u{200B}b",
            "team (ops)",
            "e\u{0301}",
        ] {
            assert_eq!(shown_text("display_name", ok, false), Ok(()), "{ok:?}");
        }
        for (bad, why) in [
            ("a\0b", "control"),
            ("line\nbreak", "control"),
            ("evil\u{202E}moc", "bidirectional"),
            ("x\u{2067}y", "bidirectional"),
            ("\u{200B}\u{200C}\u{200D}", "visible"),
            ("\u{FEFF}", "visible"),
            ("   ", "visible"),
            ("\u{3164}", "visible"),
            ("\u{2800}\u{FE0F}", "visible"),
            ("", "visible"),
        ] {
            let e = shown_text("display_name", bad, false).unwrap_err();
            assert!(
                e.starts_with("display_name") && e.contains(why),
                "{bad:?}: {e}"
            );
        }
        assert_eq!(shown_text("topic", "", true), Ok(()));
    }

    /// The functions and the patterns the OpenAPI document publishes agree.
    #[test]
    fn the_published_patterns_say_what_the_server_checks() {
        let samples = [
            "",
            "a",
            "ab",
            "abc",
            "a.b",
            "a b",
            "Abc",
            "team-1",
            "x_y",
            "é",
            "a\u{0}",
            "a\tb",
            "\u{200B}",
            "\u{202E}x",
            " x ",
            "李",
            "🎉",
            "\u{85}",
            "\u{3000}",
            &"x".repeat(32),
            &"x".repeat(33),
            &"x".repeat(64),
            &"x".repeat(65),
        ];
        let (user, room, shown, shown_or_empty, search) = (
            regex(USERNAME),
            regex(ROOM_NAME),
            regex(SHOWN_TEXT),
            regex(SHOWN_TEXT_OR_EMPTY),
            regex(SEARCH_TEXT),
        );
        for s in samples {
            assert_eq!(username(s), user.is_match(s), "username {s:?}");
            assert_eq!(room_name(s), room.is_match(s), "room name {s:?}");
            assert_eq!(
                shown_text("f", s, false).is_ok(),
                shown.is_match(s),
                "{s:?}"
            );
            assert_eq!(
                shown_text("f", s, true).is_ok(),
                shown_or_empty.is_match(s),
                "{s:?}"
            );
            assert_eq!(search_text(s).is_ok(), search.is_match(s), "search {s:?}");
        }
    }
}

/// The `@mentions` in a message body: the names (each the longest run of username characters
/// after an `@` that starts the body or follows a character that is not one), in order of first
/// appearance without repeats, and whether `@room` is among them. Which names are members is
/// decided at commit.
pub fn mentions(body: &str) -> (Vec<String>, bool) {
    let is_name = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b);
    let bytes = body.as_bytes();
    let mut names: Vec<String> = Vec::new();
    let mut room = false;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'@' && (i == 0 || !is_name(bytes[i - 1])) {
            let start = i + 1;
            let mut end = start;
            while end < bytes.len() && is_name(bytes[end]) {
                end += 1;
            }
            let name = &body[start..end];
            if name == "room" {
                room = true;
            } else if username(name) && !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
            i = end.max(start);
            continue;
        }
        i += 1;
    }
    (names, room)
}

#[cfg(test)]
mod mention_tests {
    use super::mentions;

    #[test]
    fn mentions_are_runs_of_username_characters_after_a_free_at() {
        assert_eq!(
            mentions("@alice hi @bob.smith, and @alice again; mail a@carol.com @Dave"),
            (vec!["alice".to_string(), "bob.smith".to_string()], false)
        );
        assert_eq!(mentions("heads up @room!"), (vec![], true));
        assert_eq!(
            mentions("@@eve (@frank) @ x @ab"),
            (vec!["eve".into(), "frank".into()], false)
        );
        assert_eq!(mentions("ünï@zed @zed"), (vec!["zed".into()], false));
    }
}

/// A reaction: one emoji grapheme (at most 64 bytes) or a `:shortcode:` of 1-32 of
/// `[a-z0-9_+-]`. Emoji are kept exactly as sent.
pub fn emoji(text: &str) -> bool {
    use unicode_segmentation::UnicodeSegmentation;
    if let Some(code) = text.strip_prefix(':').and_then(|t| t.strip_suffix(':')) {
        return (1..=32).contains(&code.len())
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_+-".contains(&b));
    }
    if text.is_empty() || text.len() > 64 || text.graphemes(true).count() != 1 {
        return false;
    }
    let mut chars = text.chars();
    let first = chars.next().expect("not empty");
    let keycap = matches!(first, '0'..='9' | '#' | '*') && text.ends_with('\u{20E3}');
    // Emoji are symbols: no letter, digit (outside a keycap), space, control or format
    // character leads one.
    keycap
        || (!first.is_alphanumeric()
            && !first.is_whitespace()
            && !first.is_control()
            && (first as u32) >= 0xA9
            && !is_format(first))
}

/// Invisible format characters (zero-width, bidi controls) that must not stand alone.
fn is_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}')
}

#[cfg(test)]
mod emoji_tests {
    use super::emoji;

    #[test]
    fn an_emoji_is_one_grapheme_or_a_shortcode() {
        for ok in [
            "👍",
            "👍🏽",
            "👨‍👩‍👧‍👦",
            "🇫🇷",
            "1️⃣",
            "❤️",
            ":thumbsup:",
            ":+1:",
            ":a_b-c:",
        ] {
            assert!(emoji(ok), "{ok}");
        }
        for bad in [
            "", "a", "ab", "👍👍", ":", "::", ":Thumbs:", ":a b:", " 👍", "\u{200B}", "\u{202E}",
            "1", "é", "\u{0007}",
        ] {
            assert!(!emoji(bad), "{bad:?}");
        }
        assert!(!emoji(&format!(":{}:", "a".repeat(33))));
    }
}
