//! Text positions: LSP speaks in (line, UTF-16 code unit) pairs, Herald's diagnostics in byte
//! offsets. Every conversion goes through here, so non-ASCII text lands where it should.

use tower_lsp::lsp_types::{Position, Range, TextDocumentContentChangeEvent};

/// Byte offset of the start of each line of `text` (the first is always 0).
pub fn line_starts(text: &str) -> Vec<usize> {
    let mut starts = vec![0];
    starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
    starts
}

/// Line and UTF-16 column of a byte offset. Offsets inside a character or past the end are
/// clamped to the nearest valid position before it.
pub fn offset_to_position(text: &str, offset: usize) -> Position {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[..line_start].matches('\n').count();
    let character: usize = text[line_start..offset].chars().map(char::len_utf16).sum();
    Position::new(line as u32, character as u32)
}

/// [`offset_to_position`] with precomputed [`line_starts`], for converting many offsets.
pub fn offset_to_position_with(text: &str, starts: &[usize], offset: usize) -> Position {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let line = starts.partition_point(|&s| s <= offset).saturating_sub(1);
    let character: usize = text[starts[line]..offset]
        .chars()
        .map(char::len_utf16)
        .sum();
    Position::new(line as u32, character as u32)
}

/// Byte offset of an LSP position. A line past the end maps to the end of the text, a column
/// past the end of its line to the end of that line, and a column inside a surrogate pair to
/// the start of that character.
pub fn position_to_offset(text: &str, pos: Position) -> usize {
    let mut line_start = 0;
    for _ in 0..pos.line {
        match text[line_start..].find('\n') {
            Some(i) => line_start += i + 1,
            None => return text.len(),
        }
    }
    let line_end = text[line_start..]
        .find('\n')
        .map(|i| line_start + i)
        .unwrap_or(text.len());
    let mut units = 0usize;
    for (i, c) in text[line_start..line_end].char_indices() {
        let next = units + c.len_utf16();
        if next > pos.character as usize {
            return line_start + i;
        }
        units = next;
    }
    line_end
}

/// The LSP range of a byte range.
pub fn range_of(text: &str, bytes: std::ops::Range<usize>) -> Range {
    Range::new(
        offset_to_position(text, bytes.start),
        offset_to_position(text, bytes.end.max(bytes.start)),
    )
}

/// Apply one `didChange` content change: a ranged edit, or the whole text when it has no range.
pub fn apply_change(text: &mut String, change: &TextDocumentContentChangeEvent) {
    match change.range {
        Some(range) => {
            let start = position_to_offset(text, range.start);
            let end = position_to_offset(text, range.end).max(start);
            text.replace_range(start..end, &change.text);
        }
        None => *text = change.text.clone(),
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_columns_count_surrogate_pairs_twice() {
        let text = "let s = \"😀é\"; x\nsecond";
        let x = text.find('x').unwrap();
        // `😀` is two UTF-16 units, `é` one.
        assert_eq!(offset_to_position(text, x), Position::new(0, 15));
        assert_eq!(position_to_offset(text, Position::new(0, 15)), x);
        // A column inside the surrogate pair falls back to the emoji's start.
        let emoji = text.find('😀').unwrap();
        assert_eq!(position_to_offset(text, Position::new(0, 10)), emoji);
        assert_eq!(position_to_offset(text, Position::new(1, 99)), text.len());
        assert_eq!(position_to_offset(text, Position::new(9, 0)), text.len());
        let starts = line_starts(text);
        for off in 0..=text.len() {
            assert_eq!(
                offset_to_position_with(text, &starts, off),
                offset_to_position(text, off)
            );
        }
    }

    #[test]
    fn ranged_changes_edit_in_place() {
        let mut text = String::from("héllo\nwörld\n");
        apply_change(
            &mut text,
            &TextDocumentContentChangeEvent {
                range: Some(Range::new(Position::new(1, 1), Position::new(1, 2))),
                range_length: None,
                text: "o".into(),
            },
        );
        assert_eq!(text, "héllo\nworld\n");
        apply_change(
            &mut text,
            &TextDocumentContentChangeEvent {
                range: None,
                range_length: None,
                text: "new".into(),
            },
        );
        assert_eq!(text, "new");
    }
}
