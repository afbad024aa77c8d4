//! Text that any local user chose (a comm, a symbol, a path) made safe to
//! print on a terminal, the way `ps` does it: every character that is not
//! printable becomes one '?'. A newline in a comm can then not forge a row,
//! and an escape sequence cannot reach the terminal.

use std::borrow::Cow;

/// Longer text is cut here and marked: a symbol name can be as long as its
/// author liked, and a view of many lines must stay readable.
pub const MAX_CHARS: usize = 512;

const CUT_MARK: &str = "...";

/// Characters that move the cursor, reorder or hide text, or end a line:
/// the C0 and C1 controls and DEL, Unicode's line and paragraph separators,
/// and the format characters (bidirectional overrides, zero-width ones).
fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// `text` as it may be printed: each unprintable character is one '?', so
/// the width stays what it was, and at most [`MAX_CHARS`] characters. Text
/// that needs nothing is not copied.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    let clean = !text.chars().any(is_unprintable);
    if clean && text.len() <= MAX_CHARS {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len().min(MAX_CHARS * 4));
    for (count, c) in text.chars().enumerate() {
        if count == MAX_CHARS {
            shown.truncate(
                shown
                    .char_indices()
                    .nth(MAX_CHARS - CUT_MARK.len())
                    .map_or(shown.len(), |(at, _)| at),
            );
            shown.push_str(CUT_MARK);
            break;
        }
        shown.push(if is_unprintable(c) { '?' } else { c });
    }
    if clean && shown == text {
        return Cow::Borrowed(text);
    }
    Cow::Owned(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_is_borrowed_unchanged() {
        for text in ["nginx", "tcptrace-testpe", "λ-worker", "数据库", ""] {
            assert!(
                matches!(sanitize(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn controls_become_one_question_mark_each() {
        assert_eq!(sanitize("\n99999 FAKE  9"), "?99999 FAKE  9");
        assert_eq!(sanitize("\x1b[31mred\x07"), "?[31mred?");
        assert_eq!(sanitize("a\rb\tc\x7fd\u{9b}e"), "a?b?c?d?e");
        // Right-to-left override and a zero-width space: text that lies
        // about what it says.
        assert_eq!(sanitize("abc\u{202E}fed\u{200B}"), "abc?fed?");
        assert_eq!(sanitize("x\u{2028}y"), "x?y");
    }

    #[test]
    fn long_text_is_cut_and_marked() {
        let long = "f".repeat(MAX_CHARS + 100);
        let shown = sanitize(&long);
        assert_eq!(shown.chars().count(), MAX_CHARS);
        assert!(shown.ends_with("f..."), "{shown}");
        let exact = "g".repeat(MAX_CHARS);
        assert_eq!(sanitize(&exact), exact.as_str());
        let wide = "界".repeat(MAX_CHARS + 1);
        assert_eq!(sanitize(&wide).chars().count(), MAX_CHARS);
    }
}
