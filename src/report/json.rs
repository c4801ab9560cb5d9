//! JSON as qemu-img prints it: keys in qemu's order, four-space indentation, empty
//! containers opened and closed on separate lines.

use std::fmt::Write;

/// A JSON value whose objects keep their keys in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Json {
    /// `true` or `false`.
    Bool(bool),
    /// An integer (wide enough for every u64 and i64).
    Int(i128),
    /// A string.
    Str(String),
    /// A list.
    Array(Vec<Json>),
    /// Keys and values, in order.
    Object(Vec<(&'static str, Json)>),
}

impl Json {
    /// An integer value.
    pub fn int(n: impl Into<i128>) -> Json {
        Json::Int(n.into())
    }

    /// A string value.
    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    /// The pretty form `qemu-img … --output=json` prints.
    pub fn pretty(&self) -> String {
        let mut out = String::new();
        self.write_pretty(&mut out, 0);
        out
    }

    fn write_pretty(&self, out: &mut String, level: usize) {
        let pad = |n: usize| "    ".repeat(n);
        match self {
            Json::Array(items) => {
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    out.push_str(&pad(level + 1));
                    item.write_pretty(out, level + 1);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                out.push_str(&pad(level));
                out.push(']');
            }
            Json::Object(fields) => {
                out.push_str("{\n");
                for (i, (key, value)) in fields.iter().enumerate() {
                    let _ = write!(out, "{}{}: ", pad(level + 1), quote(key));
                    value.write_pretty(out, level + 1);
                    out.push_str(if i + 1 < fields.len() { ",\n" } else { "\n" });
                }
                out.push_str(&pad(level));
                out.push('}');
            }
            scalar => scalar.write_compact(out),
        }
    }

    /// One line, with qemu's spacing: `{ "a": 1, "b": true}` (as map prints entries).
    pub fn write_compact(&self, out: &mut String) {
        match self {
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Str(s) => out.push_str(&quote(s)),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write_compact(out);
                }
                out.push(']');
            }
            Json::Object(fields) => {
                out.push_str("{ ");
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    let _ = write!(out, "{}: ", quote(key));
                    value.write_compact(out);
                }
                out.push('}');
            }
        }
    }

    /// QEMU's generic human form of a QAPI object: dashes become spaces, lists number
    /// their items.
    pub fn write_tree(&self, out: &mut String, level: usize) {
        let pad = "    ".repeat(level);
        let scalar = |v: &Json| match v {
            Json::Bool(b) => b.to_string(),
            Json::Int(n) => n.to_string(),
            Json::Str(s) => s.clone(),
            _ => String::new(),
        };
        let items: Vec<(String, &Json)> = match self {
            Json::Object(fields) => fields
                .iter()
                .map(|(k, v)| (k.replace('-', " "), v))
                .collect(),
            Json::Array(list) => list
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("[{i}]"), v))
                .collect(),
            _ => return,
        };
        for (key, v) in items {
            match v {
                Json::Object(_) | Json::Array(_) => {
                    let _ = writeln!(out, "{pad}{key}:");
                    v.write_tree(out, level + 1);
                }
                _ => {
                    let _ = writeln!(out, "{pad}{key}: {}", scalar(v));
                }
            }
        }
    }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_and_compact_forms() {
        let v = Json::Object(vec![
            ("a", Json::Array(vec![])),
            ("b", Json::str("x\"y")),
            ("c", Json::int(3)),
        ]);
        assert_eq!(
            v.pretty(),
            "{\n    \"a\": [\n    ],\n    \"b\": \"x\\\"y\",\n    \"c\": 3\n}"
        );
        let mut line = String::new();
        v.write_compact(&mut line);
        assert_eq!(line, "{ \"a\": [], \"b\": \"x\\\"y\", \"c\": 3}");
    }
}
