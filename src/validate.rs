//! The protocol's rules for names and for text people read as a name (display names, topics),
//! in one place: REST handlers and the operator's resources check here. Plain functions, no
//! I/O; each error names the field in the protocol's words.

use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

/// A username: 3-32 of `[a-z0-9_.-]`.
pub fn username(name: &str) -> bool {
    (3..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// A room name: 1-64 of `[a-z0-9_-]`.
pub fn room_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b))
}

/// Explicit directional formatting (embeddings, overrides, isolates): they reorder the text
/// around them, so a name can pass for another (`"evil\u{202E}moc.elgoog"`).
fn bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Whether a character leaves a mark: not a control, format (zero-width) or combining
/// character, not a space, and not one of the letters and symbols that render as blank.
fn visible(c: char) -> bool {
    let blank = matches!(
        c,
        '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' | '\u{2800}'
    );
    !blank
        && !matches!(
            c.general_category_group(),
            GeneralCategoryGroup::Other | GeneralCategoryGroup::Separator
        )
        && !matches!(
            c.general_category(),
            unicode_properties::GeneralCategory::NonspacingMark
                | unicode_properties::GeneralCategory::EnclosingMark
        )
}

/// Text shown as a name or a topic: no control characters, no directional overrides, and
/// (unless empty is allowed and it is empty) at least one visible character.
pub fn shown_text(field: &str, text: &str, allow_empty: bool) -> Result<(), String> {
    if text.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    if text.chars().any(bidi_control) {
        return Err(format!(
            "{field} must not contain bidirectional override characters (U+202A-202E, U+2066-2069)"
        ));
    }
    if !(allow_empty && text.is_empty()) && !text.chars().any(visible) {
        return Err(format!("{field} must contain a visible character"));
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
        for ok in ["Alice", "Zoë", "李小龙", "🎉", "a\u{200B}b", "team (ops)"] {
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
            ("\u{0301}", "visible"),
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
}
