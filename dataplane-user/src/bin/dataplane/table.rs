//! Plain-text tables for the CLI's `ls` commands: every column as wide as
//! its widest cell (header included), so values line up under their
//! headers whatever their length.

/// How a column's cells sit in its width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    /// Numbers: right-aligned, so digits of one magnitude line up.
    Right,
}

/// A table: headers with their alignment, then rows of cells.
#[derive(Clone, Debug, Default)]
pub struct Table {
    headers: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[(&str, Align)]) -> Table {
        Table {
            headers: headers.iter().map(|(h, a)| ((*h).to_owned(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as lines: columns separated by two spaces, no trailing
    /// blanks.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self
            .headers
            .iter()
            .map(|(h, _)| h.chars().count())
            .collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut out = String::new();
            let last = self.headers.len().saturating_sub(1);
            for (i, (cell, ((_, align), width))) in
                cells.zip(self.headers.iter().zip(&widths)).enumerate()
            {
                if i > 0 {
                    out.push_str("  ");
                }
                let pad = width.saturating_sub(cell.chars().count());
                match align {
                    Align::Right => {
                        out.extend(std::iter::repeat_n(' ', pad));
                        out.push_str(cell);
                    }
                    Align::Left => {
                        out.push_str(cell);
                        if i != last {
                            out.extend(std::iter::repeat_n(' ', pad));
                        }
                    }
                }
            }
            // An empty last cell would leave the separator behind.
            let mut out = out.trim_end().to_owned();
            out.push('\n');
            out
        };
        let mut out = line(&mut self.headers.iter().map(|(h, _)| h.as_str()));
        for row in &self.rows {
            out += &line(&mut row.iter().map(String::as_str));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_take_the_widest_cell() {
        let mut t = Table::new(&[
            ("PKTS", Align::Right),
            ("HOST", Align::Left),
            ("NETWORK", Align::Left),
        ]);
        t.row(vec!["7".into(), "0.0.0.0:8080/tcp".into(), "bridge".into()]);
        t.row(vec!["123456".into(), "a".into(), "n".into()]);
        assert_eq!(
            t.render(),
            "  PKTS  HOST              NETWORK\n\
             \x20    7  0.0.0.0:8080/tcp  bridge\n\
             123456  a                 n\n"
        );
    }

    #[test]
    fn short_rows_are_filled() {
        let mut t = Table::new(&[("A", Align::Left), ("B", Align::Left)]);
        t.row(vec!["x".into()]);
        assert_eq!(t.render(), "A  B\nx\n");
    }
}
