//! Python's `str()`, `repr()` and `json.dumps()` of template values.
//!
//! Hugging Face renders chat templates with Python's Jinja2, so whatever a template prints
//! goes through Python's formatting: `{{ tool | string }}` of a dict is its repr
//! (`{'name': 'f', 'strict': True}`), `{{ flag }}` prints `True`, and transformers' own
//! `tojson` is `json.dumps` with `ensure_ascii=False`. MiniJinja formats values the Rust way,
//! so the chat template renderer routes those cases through the functions here to produce the
//! very bytes the model saw in training.

use std::fmt::Write as _;

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// Nesting beyond this is refused rather than recursed into.
const MAX_DEPTH: usize = 256;

/// Code points (at or above U+0080) for which Python's `str.isprintable()` is false and that
/// are assigned: categories Cc, Cf, Cs, Co, Zl, Zp and Zs other than the space, from Python's
/// Unicode 14 database. Unassigned code points (Cn), which Python also escapes, are left out on
/// purpose: that set grows with every Unicode version, and a table of it would misjudge every
/// character assigned after it was made (new emoji above all).
const NON_PRINTABLE: &[(u32, u32)] = &[
    (0x80, 0xa0),
    (0xad, 0xad),
    (0x600, 0x605),
    (0x61c, 0x61c),
    (0x6dd, 0x6dd),
    (0x70f, 0x70f),
    (0x890, 0x891),
    (0x8e2, 0x8e2),
    (0x1680, 0x1680),
    (0x180e, 0x180e),
    (0x2000, 0x200f),
    (0x2028, 0x202f),
    (0x205f, 0x2064),
    (0x2066, 0x206f),
    (0x3000, 0x3000),
    (0xd800, 0xf8ff),
    (0xfeff, 0xfeff),
    (0xfff9, 0xfffb),
    (0x110bd, 0x110bd),
    (0x110cd, 0x110cd),
    (0x13430, 0x13438),
    (0x1bca0, 0x1bca3),
    (0x1d173, 0x1d17a),
    (0xe0001, 0xe0001),
    (0xe0020, 0xe007f),
    (0xf0000, 0xffffd),
    (0x100000, 0x10fffd),
];

/// Python's `str(value)`: strings as they are, undefined as the empty string (as Jinja2's
/// `Undefined` does), everything else as its repr.
pub fn python_str(value: &Value) -> Result<String, Error> {
    match value.kind() {
        ValueKind::String => Ok(value.as_str().unwrap_or_default().to_owned()),
        ValueKind::Undefined => Ok(String::new()),
        _ => python_repr(value),
    }
}

/// Python's `repr(value)`: `'text'`, `True`, `None`, `1.0`, `[1, 2]`, `{'a': 1}`.
pub fn python_repr(value: &Value) -> Result<String, Error> {
    let mut out = String::new();
    write_repr(&mut out, value, 0)?;
    Ok(out)
}

/// Whether Python prints `value` differently from MiniJinja, so that the template output
/// must go through [`python_str`] instead of MiniJinja's default formatter.
pub fn formats_differently(value: &Value) -> bool {
    match value.kind() {
        ValueKind::Bool | ValueKind::None | ValueKind::Seq | ValueKind::Map => true,
        ValueKind::Iterable => true,
        ValueKind::Number => !value.is_integer(),
        _ => false,
    }
}

fn write_repr(out: &mut String, value: &Value, depth: usize) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "value nested too deeply to print",
        ));
    }
    match value.kind() {
        ValueKind::Undefined => out.push_str("Undefined"),
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => out.push_str(&number_repr(value)?),
        ValueKind::String => write_str_repr(out, value.as_str().unwrap_or_default()),
        ValueKind::Bytes => write_bytes_repr(out, value.as_bytes().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let tuple = value.is_tuple();
            out.push(if tuple { '(' } else { '[' });
            let mut count = 0usize;
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &item, depth + 1)?;
                count += 1;
            }
            if tuple && count == 1 {
                out.push(',');
            }
            out.push(if tuple { ')' } else { ']' });
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &key, depth + 1)?;
                out.push_str(": ");
                write_repr(out, &value.get_item(&key)?, depth + 1)?;
            }
            out.push('}');
        }
        ValueKind::Invalid => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("invalid value: {value}"),
            ))
        }
        _ => out.push_str(&value.to_string()),
    }
    Ok(())
}

/// Python's repr of an int (digits as they are) or a float (see [`float_repr`]).
fn number_repr(value: &Value) -> Result<String, Error> {
    if value.is_integer() {
        return Ok(value.to_string());
    }
    let float = f64::try_from(value.clone())?;
    Ok(float_repr(float))
}

/// Python's `repr(float)`: the shortest digits that round-trip, positional notation for
/// decimal exponents in -4..16 (always with a fractional part, `1.0`), scientific otherwise
/// with a signed two-digit-minimum exponent (`1e+16`, `1.5e-05`).
pub fn float_repr(value: f64) -> String {
    if value.is_nan() {
        return "nan".into();
    }
    if value.is_infinite() {
        return if value > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exponent) {
        if exponent >= 0 {
            let int_len = exponent as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exponent - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let sign = if exponent < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", exponent.unsigned_abs());
    }
    out
}

/// Whether Python's `str.isprintable()` holds for `c` (see [`NON_PRINTABLE`] for the one
/// departure).
fn is_printable(c: char) -> bool {
    let code = c as u32;
    if code < 0x80 {
        return (0x20..0x7f).contains(&code);
    }
    !NON_PRINTABLE
        .iter()
        .any(|&(low, high)| (low..=high).contains(&code))
}

/// Python's `repr(str)`: single quotes unless the text holds a single quote and no double
/// one; backslash escapes for the quote, backslash, `\n`, `\r`, `\t` and non-printables.
fn write_str_repr(out: &mut String, text: &str) {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_printable(c) => out.push(c),
            c => {
                let code = c as u32;
                let _ = if code < 0x100 {
                    write!(out, "\\x{code:02x}")
                } else if code < 0x10000 {
                    write!(out, "\\u{code:04x}")
                } else {
                    write!(out, "\\U{code:08x}")
                };
            }
        }
    }
    out.push(quote);
}

/// Python's `repr(bytes)`: `b'...'` with the same quoting rule as strings.
fn write_bytes_repr(out: &mut String, bytes: &[u8]) {
    let quote = if bytes.contains(&b'\'') && !bytes.contains(&b'"') {
        b'"'
    } else {
        b'\''
    };
    out.push('b');
    out.push(char::from(quote));
    for &byte in bytes {
        match byte {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b if b == quote => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x20..=0x7e => out.push(char::from(byte)),
            _ => {
                let _ = write!(out, "\\x{byte:02x}");
            }
        }
    }
    out.push(char::from(quote));
}

/// Options of Python's `json.dumps` that transformers' `tojson` filter passes through.
#[derive(Debug, Clone, Default)]
pub struct JsonOptions {
    /// Escape every non-ASCII character as `\uXXXX` (transformers' default: false).
    pub ensure_ascii: bool,
    /// Pretty-print with this string per level (an int indent `n` is `n` spaces).
    pub indent: Option<String>,
    /// `(item_separator, key_separator)`; Python's default depends on `indent`.
    pub separators: Option<(String, String)>,
    /// Sort map keys.
    pub sort_keys: bool,
}

/// Python's `json.dumps(value, ...)` with the given options.
pub fn python_json(value: &Value, options: &JsonOptions) -> Result<String, Error> {
    let (item_sep, key_sep) = match &options.separators {
        Some((item, key)) => (item.clone(), key.clone()),
        None if options.indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let mut writer = JsonWriter {
        options,
        item_sep,
        key_sep,
        out: String::new(),
    };
    writer.value(value, 0)?;
    Ok(writer.out)
}

struct JsonWriter<'a> {
    options: &'a JsonOptions,
    item_sep: String,
    key_sep: String,
    out: String,
}

impl JsonWriter<'_> {
    fn value(&mut self, value: &Value, depth: usize) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "value nested too deeply for JSON",
            ));
        }
        match value.kind() {
            ValueKind::None | ValueKind::Undefined => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                let text = if value.is_integer() {
                    value.to_string()
                } else {
                    json_float(f64::try_from(value.clone())?)
                };
                self.out.push_str(&text);
            }
            ValueKind::String => self.string(value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container('[', ']', items.len(), depth, |writer, i, depth| {
                    writer.value(&items[i], depth)
                })?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((json_key(&key)?, item));
                }
                if self.options.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.container('{', '}', entries.len(), depth, |writer, i, depth| {
                    let (key, item) = &entries[i];
                    writer.string(key);
                    let key_sep = writer.key_sep.clone();
                    writer.out.push_str(&key_sep);
                    writer.value(item, depth)
                })?;
            }
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("Object of type {kind} is not JSON serializable"),
                ))
            }
        }
        Ok(())
    }

    /// Writes `open`, `len` items separated as `json.dumps` does, and `close`.
    fn container(
        &mut self,
        open: char,
        close: char,
        len: usize,
        depth: usize,
        mut item: impl FnMut(&mut Self, usize, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.out.push(open);
        if len == 0 {
            self.out.push(close);
            return Ok(());
        }
        let indent = self.options.indent.clone();
        let newline = |level: usize| match &indent {
            Some(unit) => format!("\n{}", unit.repeat(level)),
            None => String::new(),
        };
        self.out.push_str(&newline(depth + 1));
        for i in 0..len {
            if i > 0 {
                let separator = format!("{}{}", self.item_sep, newline(depth + 1));
                self.out.push_str(&separator);
            }
            item(self, i, depth + 1)?;
        }
        self.out.push_str(&newline(depth));
        self.out.push(close);
        Ok(())
    }

    fn string(&mut self, text: &str) {
        self.out.push('"');
        for c in text.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{8}' => self.out.push_str("\\b"),
                '\u{c}' => self.out.push_str("\\f"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", c as u32);
                }
                c if self.options.ensure_ascii && !(' '..='~').contains(&c) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(self.out, "\\u{unit:04x}");
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
}

/// A float as `json.dumps` writes it: its repr, with JavaScript's names for non-finite ones.
fn json_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else {
        float_repr(value)
    }
}

/// A map key as `json.dumps` writes it: strings as they are, numbers, booleans and None
/// turned into their JSON text; anything else is refused as Python refuses it.
fn json_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::None => Ok("null".into()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::Number if key.is_integer() => Ok(key.to_string()),
        ValueKind::Number => Ok(json_float(f64::try_from(key.clone())?)),
        kind => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("keys must be str, int, float, bool or None, not {kind}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::value::Serde;

    fn value(json: &str) -> Value {
        let parsed: serde_json::Value = serde_json::from_str(json).expect("test JSON parses");
        Value::from(Serde(parsed))
    }

    #[test]
    fn repr_of_dict_matches_python() {
        let tool = value(
            r#"{"name": "calc", "strict": true, "examples": null, "n": 3, "x": 1.5,
                "enum": ["a", "b"], "nested": {"empty": {}, "list": []}}"#,
        );
        assert_eq!(
            python_repr(&tool).expect("repr"),
            "{'name': 'calc', 'strict': True, 'examples': None, 'n': 3, 'x': 1.5, \
             'enum': ['a', 'b'], 'nested': {'empty': {}, 'list': []}}"
        );
    }

    #[test]
    fn str_of_string_is_the_string_and_of_undefined_is_empty() {
        assert_eq!(python_str(&Value::from("it's")).expect("str"), "it's");
        assert_eq!(python_str(&Value::UNDEFINED).expect("str"), "");
        assert_eq!(python_str(&Value::from(true)).expect("str"), "True");
        assert_eq!(python_str(&Value::from(())).expect("str"), "None");
    }

    #[test]
    fn string_repr_quotes_and_escapes_like_python() {
        let repr = |text: &str| python_repr(&Value::from(text)).expect("repr");
        assert_eq!(repr("plain"), "'plain'");
        assert_eq!(repr("it's"), "\"it's\"");
        assert_eq!(repr("say \"hi\""), "'say \"hi\"'");
        assert_eq!(repr("both ' and \""), "'both \\' and \"'");
        assert_eq!(repr("a\\b\nc\td\re"), "'a\\\\b\\nc\\td\\re'");
        assert_eq!(repr("\u{0}\u{1b}\u{7f}"), "'\\x00\\x1b\\x7f'");
        assert_eq!(repr("é 日本 👋"), "'é 日本 👋'");
        assert_eq!(
            repr("\u{a0}\u{ad}\u{200b}\u{2028}"),
            "'\\xa0\\xad\\u200b\\u2028'"
        );
        assert_eq!(repr("\u{e0001}"), "'\\U000e0001'");
    }

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (1.5, "1.5"),
            (123.456, "123.456"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e20, "1.2345e+20"),
            (1e300, "1e+300"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
        ];
        for (value, expected) in cases {
            assert_eq!(float_repr(value), expected, "repr({value:?})");
        }
    }

    #[test]
    fn sequence_and_bytes_repr() {
        let pair = Value::from_iter([1, 2]);
        assert_eq!(python_repr(&pair).expect("repr"), "[1, 2]");
        assert_eq!(
            python_repr(&Value::from_bytes(b"a'\x01".to_vec())).expect("repr"),
            "b\"a'\\x01\""
        );
    }

    #[test]
    fn json_matches_python_dumps() {
        let data = value(r#"{"b": [1, 2.0, true, null], "a": "é\n\"<x>\u0001", "c": {}}"#);
        assert_eq!(
            python_json(&data, &JsonOptions::default()).expect("json"),
            "{\"b\": [1, 2.0, true, null], \"a\": \"é\\n\\\"<x>\\u0001\", \"c\": {}}"
        );
        let pretty = JsonOptions {
            indent: Some("  ".into()),
            sort_keys: true,
            ..JsonOptions::default()
        };
        assert_eq!(
            python_json(&data, &pretty).expect("json"),
            "{\n  \"a\": \"é\\n\\\"<x>\\u0001\",\n  \"b\": [\n    1,\n    2.0,\n    true,\n    null\n  ],\n  \"c\": {}\n}"
        );
        let ascii = JsonOptions {
            ensure_ascii: true,
            ..JsonOptions::default()
        };
        assert_eq!(
            python_json(&value(r#""é👋""#), &ascii).expect("json"),
            "\"\\u00e9\\ud83d\\udc4b\""
        );
        let compact = JsonOptions {
            separators: Some((",".into(), ":".into())),
            ..JsonOptions::default()
        };
        assert_eq!(
            python_json(&value(r#"{"a": [1, 2]}"#), &compact).expect("json"),
            "{\"a\":[1,2]}"
        );
    }
}
