//! A small JSON reader for valed's statistics document.
//!
//! valed answers `VALE_REQ_STATS` with
//! `{"ports":[{"name":"vale0:a","switch":"vale0","port_idx":0,"in_packets":N,...}]}`.
//! That is all `vale-ctl` reads, so instead of a JSON crate this module parses
//! RFC 8259 JSON into a tree that keeps object members in document order, with a
//! depth bound, and nothing more.

/// Why a statistics document could not be shown as a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatsError {
    /// Not JSON: what was expected, and the byte offset.
    Syntax(&'static str, usize),
    /// JSON, but not the expected shape.
    Shape(&'static str),
}

impl std::fmt::Display for StatsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatsError::Syntax(what, at) => write!(f, "bad JSON at byte {at}: expected {what}"),
            StatsError::Shape(what) => write!(f, "unexpected statistics document: {what}"),
        }
    }
}

impl std::error::Error for StatsError {}

/// A JSON value. Numbers keep their text, so 64-bit counters print exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, as written.
    Number(String),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, members in document order.
    Object(Vec<(String, Json)>),
}

/// Nesting bound; valed's document is three levels deep.
const MAX_DEPTH: usize = 32;

impl Json {
    /// Parses a whole document (white space around it allowed, nothing else).
    ///
    /// # Errors
    ///
    /// [`StatsError::Syntax`] where the text stops being JSON.
    pub fn parse(text: &str) -> Result<Json, StatsError> {
        let mut p = Parser {
            b: text.as_bytes(),
            i: 0,
        };
        let v = p.value(0)?;
        p.ws();
        if p.i != p.b.len() {
            return Err(StatsError::Syntax("end of document", p.i));
        }
        Ok(v)
    }

    /// The member `key` of an object (the first, if repeated).
    pub fn get(&self, key: &str) -> Option<&Json> {
        self.as_object()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The members, if this is an object.
    pub fn as_object(&self) -> Option<&[(String, Json)]> {
        match self {
            Json::Object(m) => Some(m),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The text, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// How a table cell shows the value: numbers and strings bare, other scalars
    /// as JSON, containers as `[...]` / `{...}`.
    pub fn display_scalar(&self) -> &str {
        match self {
            Json::Null => "null",
            Json::Bool(true) => "true",
            Json::Bool(false) => "false",
            Json::Number(n) => n,
            Json::String(s) => s,
            Json::Array(_) => "[...]",
            Json::Object(_) => "{...}",
        }
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8, what: &'static str) -> Result<(), StatsError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(StatsError::Syntax(what, self.i))
        }
    }

    fn literal(&mut self, word: &'static str, v: Json) -> Result<Json, StatsError> {
        if self.b[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(StatsError::Syntax(word, self.i))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, StatsError> {
        if depth > MAX_DEPTH {
            return Err(StatsError::Syntax("less nesting", self.i));
        }
        self.ws();
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(StatsError::Syntax("a value", self.i)),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, StatsError> {
        self.i += 1;
        let mut members = Vec::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Json::Object(members));
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(StatsError::Syntax("a member name", self.i));
            }
            let k = self.string()?;
            self.ws();
            self.eat(b':', "':'")?;
            let v = self.value(depth + 1)?;
            members.push((k, v));
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Json::Object(members));
                }
                _ => return Err(StatsError::Syntax("',' or '}'", self.i)),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, StatsError> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(StatsError::Syntax("',' or ']'", self.i)),
            }
        }
    }

    fn number(&mut self) -> Result<Json, StatsError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(StatsError::Syntax("a digit", self.i)),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return Err(StatsError::Syntax("a digit", self.i));
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return Err(StatsError::Syntax("a digit", self.i));
            }
            self.digits();
        }
        // Only ASCII was consumed, so this slice is valid UTF-8.
        let text = String::from_utf8_lossy(&self.b[start..self.i]).into_owned();
        Ok(Json::Number(text))
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn hex4(&mut self) -> Result<u32, StatsError> {
        let h = self
            .b
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or(StatsError::Syntax("four hex digits", self.i))?;
        self.i += 4;
        Ok(h)
    }

    fn string(&mut self) -> Result<String, StatsError> {
        self.i += 1; // the opening quote
        let mut out = String::new();
        let mut run = self.i;
        loop {
            let Some(c) = self.peek() else {
                return Err(StatsError::Syntax("'\"'", self.i));
            };
            match c {
                b'"' => {
                    out.push_str(self.utf8(run, self.i)?);
                    self.i += 1;
                    return Ok(out);
                }
                b'\\' => {
                    out.push_str(self.utf8(run, self.i)?);
                    self.i += 1;
                    let esc = self.peek().ok_or(StatsError::Syntax("an escape", self.i))?;
                    self.i += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let at = self.i;
                            let hi = self.hex4()?;
                            let cp = if (0xd800..0xdc00).contains(&hi) {
                                if !self.b[self.i..].starts_with(b"\\u") {
                                    return Err(StatsError::Syntax("a low surrogate", self.i));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return Err(StatsError::Syntax("a low surrogate", at));
                                }
                                0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                            } else {
                                hi
                            };
                            out.push(
                                char::from_u32(cp)
                                    .ok_or(StatsError::Syntax("a unicode scalar", at))?,
                            );
                        }
                        _ => return Err(StatsError::Syntax("an escape", self.i - 1)),
                    }
                    run = self.i;
                }
                0..=0x1f => return Err(StatsError::Syntax("no control character", self.i)),
                _ => self.i += 1,
            }
        }
    }

    fn utf8(&self, from: usize, to: usize) -> Result<&str, StatsError> {
        std::str::from_utf8(&self.b[from..to]).map_err(|_| StatsError::Syntax("UTF-8", from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        assert_eq!(Json::parse(" null ").unwrap(), Json::Null);
        assert_eq!(Json::parse("true").unwrap(), Json::Bool(true));
        assert_eq!(
            Json::parse("18446744073709551615").unwrap(),
            Json::Number("18446744073709551615".into())
        );
        assert_eq!(
            Json::parse("-1.5e+3").unwrap(),
            Json::Number("-1.5e+3".into())
        );
        assert_eq!(
            Json::parse(r#""a\"b\\c\/\n\u00e9\ud83d\ude00x""#).unwrap(),
            Json::String("a\"b\\c/\n\u{e9}\u{1f600}x".into())
        );
        assert_eq!(
            Json::parse(r#"{"b":1,"a":[true,{}],"c":"é"}"#).unwrap(),
            Json::Object(vec![
                ("b".into(), Json::Number("1".into())),
                (
                    "a".into(),
                    Json::Array(vec![Json::Bool(true), Json::Object(vec![])])
                ),
                ("c".into(), Json::String("é".into())),
            ])
        );
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "{\"a\":1,}",
            "01",
            "1.",
            "-",
            "1e",
            "\"abc",
            "\"\\x\"",
            "\"\\ud800\"",
            "\"\\ud800\\u0041\"",
            "\"a\u{1}b\"",
            "tru",
            "1 2",
            "{1:2}",
        ] {
            assert!(Json::parse(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(Json::parse(&deep).is_err());
        let ok = "[".repeat(20) + &"]".repeat(20);
        assert!(Json::parse(&ok).is_ok());
    }

    #[test]
    fn accessors() {
        let v = Json::parse(r#"{"ports":[{"name":"x"}],"n":3}"#).unwrap();
        let ports = v.get("ports").and_then(Json::as_array).unwrap();
        assert_eq!(ports[0].get("name").and_then(Json::as_str), Some("x"));
        assert_eq!(v.get("n").map(Json::display_scalar), Some("3"));
        assert!(v.get("zz").is_none());
        assert!(ports[0].as_array().is_none());
    }
}
