//! Tables for people: columns padded to their widest cell, numbers right-aligned.

use std::fmt::Write as _;

#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        let mut numeric = vec![true; columns];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
                numeric[i] &= looks_numeric(cell);
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[&str]| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let pad = widths[i] - cell.chars().count();
                let last = i + 1 == columns;
                if numeric[i] && !self.rows.is_empty() {
                    let _ = write!(text, "{}{cell}", " ".repeat(pad));
                } else if last {
                    text.push_str(cell);
                } else {
                    let _ = write!(text, "{cell}{}", " ".repeat(pad));
                }
                if !last {
                    text.push_str("  ");
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&mut out, &self.headers);
        for row in &self.rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            line(&mut out, &cells);
        }
        out
    }
}

fn looks_numeric(cell: &str) -> bool {
    let cell = cell.trim_end_matches(['%', 's']);
    let cell = cell
        .trim_end_matches(" KiB")
        .trim_end_matches(" MiB")
        .trim_end_matches(" GiB")
        .trim_end_matches(" B");
    cell == "-" || cell.parse::<f64>().is_ok()
}

/// Bytes for people: `512 B`, `3.4 KiB`, `12.0 MiB`, `1.50 GiB`.
pub fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let n = n as f64;
    if n < KIB {
        format!("{n} B")
    } else if n < KIB * KIB {
        format!("{:.1} KiB", n / KIB)
    } else if n < KIB * KIB * KIB {
        format!("{:.1} MiB", n / KIB / KIB)
    } else {
        format!("{:.2} GiB", n / KIB / KIB / KIB)
    }
}

/// An optional number as a cell: `-` when absent.
pub fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_numbers_go_right() {
        let mut table = Table::new(&["MODEL", "BYTES", "NOTE"]);
        table.row(vec!["a".into(), "5".into(), "x".into()]);
        table.row(vec!["long-name".into(), "12345".into(), "".into()]);
        assert_eq!(
            table.render(),
            "MODEL      BYTES  NOTE\na              5  x\nlong-name  12345\n"
        );
    }

    #[test]
    fn byte_sizes_read_like_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 + 512), "3.5 KiB");
        assert_eq!(bytes(32 * 1024 * 1024), "32.0 MiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024 / 2), "1.50 GiB");
    }
}
