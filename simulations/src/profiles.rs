//! Time series of household load and PV: a set of named columns at 15-minute resolution,
//! read from a (gzip-compressed) CSV whose first line names the columns.
//!
//! The default set (`data/profiles.csv.gz`, built by `scripts/build_profiles.py`, sources in
//! `data/SOURCES.md`) is compiled into the binary, so a scenario needs no data files.

use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;

/// Resolution of every profile, seconds.
pub const PROFILE_STEP_S: u32 = 900;

/// The default profile set (see `data/SOURCES.md`).
pub static DEFAULT_PROFILES_GZ: &[u8] = include_bytes!("../data/profiles.csv.gz");

/// Why a profile file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read or decompressed.
    #[error("cannot read profile file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file has no header line.
    #[error("profile file {path} is empty; its first line must name the columns")]
    Empty {
        /// The file.
        path: String,
    },
    /// A row has the wrong number of fields.
    #[error(
        "profile file {path}, line {line}: {found} fields, expected {expected} (one per column in the header)"
    )]
    FieldCount {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// Fields found.
        found: usize,
        /// Columns in the header.
        expected: usize,
    },
    /// A value is not a finite, non-negative number.
    #[error(
        "profile file {path}, line {line}, column {column:?}: {value:?} is not a finite number of at least 0"
    )]
    Value {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// The column.
        column: String,
        /// The text found.
        value: String,
    },
}

/// Named columns of equal length.
#[derive(Debug, Clone)]
pub struct ProfileSet {
    names: Vec<String>,
    columns: Vec<Vec<f64>>,
}

impl ProfileSet {
    /// The compiled-in default set.
    pub fn default_set() -> Result<Self, ProfileError> {
        Self::from_gz(DEFAULT_PROFILES_GZ, "<built-in profiles>")
    }

    /// Reads a `.csv` or `.csv.gz` file.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ProfileError::Read {
            path: origin.clone(),
            source,
        })?;
        if path.extension().is_some_and(|e| e == "gz") {
            Self::from_gz(&bytes, &origin)
        } else {
            let text = String::from_utf8(bytes).map_err(|e| ProfileError::Read {
                path: origin.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?;
            Self::parse(&text, &origin)
        }
    }

    pub(crate) fn from_gz(bytes: &[u8], origin: &str) -> Result<Self, ProfileError> {
        let mut text = String::new();
        GzDecoder::new(bytes)
            .read_to_string(&mut text)
            .map_err(|source| ProfileError::Read {
                path: origin.to_owned(),
                source,
            })?;
        Self::parse(&text, origin)
    }

    /// Parses CSV text: a header of column names, then one row per quarter-hour.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ProfileError> {
        let mut lines = text.lines().enumerate();
        let header = lines
            .next()
            .map(|(_, h)| h)
            .filter(|h| !h.trim().is_empty())
            .ok_or_else(|| ProfileError::Empty {
                path: origin.to_owned(),
            })?;
        let names: Vec<String> = header.split(',').map(|s| s.trim().to_owned()).collect();
        let mut columns: Vec<Vec<f64>> = vec![Vec::with_capacity(35_040); names.len()];
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            // Design: the fields go straight into their columns, without a list of them per
            // line (a SimBench year is 35 000 lines); a line with too many or too few fields
            // is an error, so values pushed before it is found do not matter.
            let field_count = |found: usize| ProfileError::FieldCount {
                path: origin.to_owned(),
                line: i + 1,
                found,
                expected: names.len(),
            };
            let mut fields = line.split(',');
            for (c, column) in columns.iter_mut().enumerate() {
                let f = fields.next().ok_or_else(|| field_count(c))?;
                let v: f64 = f
                    .trim()
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite())
                    .ok_or_else(|| {
                        // A line with a bad value and the wrong number of fields is told
                        // by its field count.
                        let found = line.split(',').count();
                        if found == names.len() {
                            ProfileError::Value {
                                path: origin.to_owned(),
                                line: i + 1,
                                column: names[c].clone(),
                                value: f.to_owned(),
                            }
                        } else {
                            field_count(found)
                        }
                    })?;
                column.push(v);
            }
            let extra = fields.count();
            if extra > 0 {
                return Err(field_count(names.len() + extra));
            }
        }
        Ok(Self { names, columns })
    }

    /// Column names.
    #[must_use]
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Rows (quarter-hours) in every column.
    #[must_use]
    pub fn len(&self) -> usize {
        self.columns.first().map_or(0, Vec::len)
    }

    /// True when there are no rows.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first negative value of column `i`: `(row, value)`. Energy columns (load, PV)
    /// must have none.
    #[must_use]
    pub fn first_negative(&self, i: usize) -> Option<(usize, f64)> {
        self.columns
            .get(i)?
            .iter()
            .enumerate()
            .find(|(_, v)| **v < 0.0)
            .map(|(r, v)| (r, *v))
    }

    /// Adds a column (as long as the others).
    pub(crate) fn push_column(&mut self, name: String, values: Vec<f64>) {
        self.names.push(name);
        self.columns.push(values);
    }

    /// Column `i` (empty when out of range).
    #[must_use]
    pub fn column_at(&self, i: usize) -> &[f64] {
        self.columns.get(i).map_or(&[], Vec::as_slice)
    }

    /// A column by name.
    #[must_use]
    pub fn column(&self, name: &str) -> Option<&[f64]> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| self.columns[i].as_slice())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_default_set_is_a_year_of_quarter_hours() {
        let p = ProfileSet::default_set().unwrap();
        assert_eq!(p.len(), 35_040);
        let h0: f64 = p.column("h0").unwrap().iter().sum::<f64>() / 4.0;
        assert!((h0 - 1000.0).abs() < 1.0, "{h0}");
        assert!(p.column("pv_south").is_some());
    }

    #[test]
    fn bad_rows_are_named() {
        let e = ProfileSet::parse("a,b\n1,2\n3\n", "x.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("1 fields"), "{e}");
        let e = ProfileSet::parse("a,b\n1,2\n3,x\n", "x.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("\"b\""), "{e}");
        // Both wrong on one line: the field count is what it is told by; too many fields too.
        let e = ProfileSet::parse("a,b\n1,2\nx\n", "x.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("1 fields"), "{e}");
        let e = ProfileSet::parse("a,b\n1,2,3,4\n", "x.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("4 fields"), "{e}");
        let e = ProfileSet::parse("a,b\n1,NaN\n", "x.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("NaN"), "{e}");
        assert!(ProfileSet::parse("", "x.csv").is_err());
    }
}
