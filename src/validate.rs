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
