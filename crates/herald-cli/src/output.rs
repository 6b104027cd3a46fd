//! Output for people and for pipes: tables that fit [`TABLE_WIDTH`] columns
//! (or the terminal's width) unless `--wide`, cells cut with an ellipsis, and
//! colour only on a terminal without `NO_COLOR` (<https://no-color.org>),
//! so a log file or a pipe never holds escape codes.

use std::io::IsTerminal;

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

/// Width of a table when stdout is not a terminal (a pipe, a file, a test).
pub const TABLE_WIDTH: u16 = 100;

/// The longest cell text a table prints before cutting it with an ellipsis
/// (a contact's attributes may be megabytes).
pub const MAX_CELL_CHARS: usize = 200;

/// The ellipsis that ends a cut value.
pub const ELLIPSIS: char = '…';

/// Whether colour (ANSI escape codes) may be written to a stream that is, or
/// is not, a terminal: never when `NO_COLOR` is set to anything non-empty.
pub fn colour_allowed(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether stderr may carry colour (the log lines of `tracing`).
pub fn stderr_colour() -> bool {
    colour_allowed(std::io::stderr().is_terminal())
}

/// `s` cut to at most `max` characters, the last one an ellipsis when cut.
/// Linear in the part kept: a 50 MB value costs no more than a short one.
pub fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some(_) => {
            let keep = max.saturating_sub(1);
            let end = s.char_indices().nth(keep).map_or(s.len(), |(i, _)| i);
            let mut out = String::with_capacity(end + ELLIPSIS.len_utf8());
            out.push_str(&s[..end]);
            out.push(ELLIPSIS);
            out
        }
    }
}

/// A table with `header`. Unless `wide`, it is arranged to fit the terminal
/// (or [`TABLE_WIDTH`] off a terminal), wrapping cells where it must.
pub fn table(header: Vec<String>, wide: bool) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    if !colour_allowed(std::io::stdout().is_terminal()) {
        t.force_no_tty();
    }
    if !wide {
        t.set_content_arrangement(ContentArrangement::Dynamic);
        if !std::io::stdout().is_terminal() {
            t.set_width(TABLE_WIDTH);
        }
    }
    t.set_header(header);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_with_an_ellipsis() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("exactly10!", 10), "exactly10!");
        assert_eq!(cut("abcdefghijkl", 5), "abcd…");
        assert_eq!(cut("广东省深圳市南山区", 4), "广东省…");
    }

    #[test]
    fn cutting_a_huge_value_is_fast() {
        let huge = "x".repeat(50 << 20);
        let t = std::time::Instant::now();
        assert_eq!(cut(&huge, MAX_CELL_CHARS).chars().count(), MAX_CELL_CHARS);
        assert!(t.elapsed() < std::time::Duration::from_millis(100));
    }

    #[test]
    fn a_table_with_many_columns_fits_100_columns_off_a_terminal() {
        let header: Vec<String> = (0..14).map(|i| format!("column number {i}")).collect();
        let mut t = table(header, false);
        t.add_row(
            (0..14)
                .map(|i| format!("{}", i * 123_456))
                .collect::<Vec<_>>(),
        );
        let text = t.to_string();
        assert!(
            text.lines()
                .all(|l| l.chars().count() <= TABLE_WIDTH as usize),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "{text:?}");
    }
}
