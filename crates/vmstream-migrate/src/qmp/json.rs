//! QMP's input side: a byte stream holding JSON values one after another,
//! split into values as the bytes arrive. See [`Splitter`].

use serde_json::{Map, Number, Value};

use super::error::QmpError;

/// Bounds on one input message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QmpLimits {
    /// Most bytes of tokens in one message (whitespace between tokens is not
    /// counted). Default 1 MiB.
    pub max_message: usize,
    /// Most tokens in one message. Default 65536.
    pub max_tokens: usize,
    /// Deepest nesting of objects and arrays. Default 64.
    pub max_depth: usize,
}

impl Default for QmpLimits {
    fn default() -> QmpLimits {
        QmpLimits {
            max_message: 1 << 20,
            max_tokens: 1 << 16,
            max_depth: 64,
        }
    }
}

impl QmpLimits {
    /// Sets [`QmpLimits::max_message`].
    pub fn with_max_message(mut self, bytes: usize) -> QmpLimits {
        self.max_message = bytes;
        self
    }

    /// Sets [`QmpLimits::max_tokens`].
    pub fn with_max_tokens(mut self, tokens: usize) -> QmpLimits {
        self.max_tokens = tokens;
        self
    }

    /// Sets [`QmpLimits::max_depth`].
    pub fn with_max_depth(mut self, depth: usize) -> QmpLimits {
        self.max_depth = depth;
        self
    }
}

/// A message that could not be read: what QMP answers (always a
/// `GenericError`) and where in the input it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    desc: String,
    offset: u64,
}

impl InputError {
    /// The description sent to the client, e.g. `JSON parse error, stray '@'`.
    pub fn desc(&self) -> &str {
        &self.desc
    }

    /// Offset in the input of the byte at which the error was detected.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The error as a QMP error response carries it.
    pub fn to_qmp(&self) -> QmpError {
        QmpError::generic(self.desc.clone())
    }
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (input offset {})", self.desc, self.offset)
    }
}

impl std::error::Error for InputError {}

/// One input message: a JSON value, or why there is none.
pub type Message = Result<Value, InputError>;

/// Splits a QMP input byte stream into JSON values, with nothing required
/// between them, the same however the input is split.
///
/// This follows QEMU's lexer and streamer (`qobject/json-lexer.c`,
/// `qobject/json-streamer.c`) so that a client sees the same responses from us
/// as from QEMU, malformed input included:
///
/// * Input is cut into JSON tokens. QEMU's extensions are accepted: strings in
///   single quotes, and `\'` as an escape in either kind of string.
/// * A message ends at the token that brings the count of open `{` and `[`
///   back to zero, or makes either count negative; a lone scalar is a message
///   too. A number or keyword ends at the first byte that cannot continue it,
///   so a trailing `1` waits for the next byte.
/// * A byte that cannot start or continue a token is a lexical error: the
///   message so far is dropped, one error is reported, and input is skipped up
///   to the next structural character (`{ } [ ] : ,`), ASCII control character
///   other than tab, or byte `0xFE`/`0xFF`. Clients provoke this on purpose to
///   get the parser back into a known state (QMP spec, "Forcing the JSON
///   parser into known-good state"). A newline is such a control character,
///   so a newline after a bad line is enough.
/// * A message larger than [`QmpLimits::max_message`], with more than
///   [`QmpLimits::max_tokens`] tokens, or nested deeper than
///   [`QmpLimits::max_depth`] is dropped with an error as soon as it crosses
///   the limit, so a client never makes the splitter hold more than those
///   bounds.
///
/// ```
/// use vmstream_migrate::qmp::{QmpLimits, Splitter};
///
/// let mut s = Splitter::new(QmpLimits::default());
/// let mut values = Vec::new();
/// for chunk in [&b"{\"execute\": \"qu"[..], b"ery-version\"}{\"exec", b"ute\": 'stop'}"] {
///     values.extend(s.messages(chunk));
/// }
/// assert_eq!(values.len(), 2);
/// assert_eq!(values[1].as_ref().unwrap()["execute"], "stop");
/// ```
#[derive(Debug)]
pub struct Splitter {
    limits: QmpLimits,
    state: State,
    /// Text of the current message's finished tokens, then the token being read.
    text: Vec<u8>,
    /// Where the token being read starts in `text`.
    token_start: usize,
    /// Finished tokens of the current message.
    tokens: Vec<Token>,
    braces: usize,
    brackets: usize,
    /// Bytes consumed since the start.
    offset: u64,
}

impl Splitter {
    /// A splitter at the start of a stream.
    pub fn new(limits: QmpLimits) -> Splitter {
        Splitter {
            limits,
            state: State::Start,
            text: Vec::new(),
            token_start: 0,
            tokens: Vec::new(),
            braces: 0,
            brackets: 0,
            offset: 0,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the splitter holds nothing of a message: no token in progress and
    /// no unfinished message (it may be skipping input after an error).
    pub fn is_idle(&self) -> bool {
        self.tokens.is_empty() && matches!(self.state, State::Start | State::Recovery)
    }

    /// Consumes bytes of `input` until one message is complete (an error is a
    /// message too) or the input is used up. Returns how many bytes were
    /// consumed and the message, if one was completed; call again with the
    /// rest. Makes progress: it consumes at least one byte or returns a message.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Message>) {
        let mut used = 0;
        while let Some(&byte) = input.get(used) {
            let (consumed, out) = self.step(byte);
            if consumed {
                used += 1;
                self.offset = self.offset.saturating_add(1);
            }
            if out.is_some() {
                return (used, out);
            }
        }
        (used, None)
    }

    /// Every message completed by `input`, in order; all of `input` is consumed
    /// once the iterator is exhausted.
    pub fn messages<'s, 'i>(&'s mut self, input: &'i [u8]) -> Messages<'s, 'i> {
        Messages {
            splitter: self,
            input,
        }
    }

    /// One transition of the lexer on `byte`: whether it was consumed, and the
    /// message it completed. A byte not consumed is looked at again.
    fn step(&mut self, byte: u8) -> (bool, Option<Message>) {
        use State::*;
        let next = match self.state {
            Start => match byte {
                b' ' | b'\t' | b'\r' | b'\n' => return (true, None),
                b'"' => DqString,
                b'\'' => SqString,
                b'0' => Zero,
                b'1'..=b'9' => Digits,
                b'-' => Sign,
                b'a'..=b'z' => Keyword,
                b'{' => return self.single(byte, Kind::LCurly),
                b'}' => return self.single(byte, Kind::RCurly),
                b'[' => return self.single(byte, Kind::LSquare),
                b']' => return self.single(byte, Kind::RSquare),
                b',' => return self.single(byte, Kind::Comma),
                b':' => return self.single(byte, Kind::Colon),
                _ => return (true, Some(self.lex_error(byte))),
            },
            DqString => match byte {
                b'"' => return self.finish_consumed(byte, Kind::String),
                b'\\' => DqEscape,
                0x20..=0xfd => DqString,
                _ => return (true, Some(self.lex_error(byte))),
            },
            SqString => match byte {
                b'\'' => return self.finish_consumed(byte, Kind::String),
                b'\\' => SqEscape,
                0x20..=0xfd => SqString,
                _ => return (true, Some(self.lex_error(byte))),
            },
            DqEscape | SqEscape => match byte {
                0x20..=0xfd if self.state == DqEscape => DqString,
                0x20..=0xfd => SqString,
                _ => return (true, Some(self.lex_error(byte))),
            },
            Zero => match byte {
                b'0'..=b'9' => return (true, Some(self.lex_error(byte))),
                b'.' => Mantissa,
                _ => return (false, self.finish_token(Kind::Integer)),
            },
            Digits => match byte {
                b'0'..=b'9' => Digits,
                b'e' | b'E' => ExpE,
                b'.' => Mantissa,
                _ => return (false, self.finish_token(Kind::Integer)),
            },
            Sign => match byte {
                b'0' => Zero,
                b'1'..=b'9' => Digits,
                _ => return (true, Some(self.lex_error(byte))),
            },
            Mantissa => match byte {
                b'0'..=b'9' => MantissaDigits,
                _ => return (true, Some(self.lex_error(byte))),
            },
            MantissaDigits => match byte {
                b'0'..=b'9' => MantissaDigits,
                b'e' | b'E' => ExpE,
                _ => return (false, self.finish_token(Kind::Float)),
            },
            ExpE => match byte {
                b'+' | b'-' => ExpSign,
                b'0'..=b'9' => ExpDigits,
                _ => return (true, Some(self.lex_error(byte))),
            },
            ExpSign => match byte {
                b'0'..=b'9' => ExpDigits,
                _ => return (true, Some(self.lex_error(byte))),
            },
            ExpDigits => match byte {
                b'0'..=b'9' => ExpDigits,
                _ => return (false, self.finish_token(Kind::Float)),
            },
            Keyword => match byte {
                b'a'..=b'z' => Keyword,
                _ => return (false, self.finish_token(Kind::Keyword)),
            },
            Recovery => match byte {
                b'\t' => return (true, None),
                0x00..=0x1f | 0xfe | 0xff | b'{' | b'}' | b'[' | b']' | b',' | b':' => {
                    self.state = Start;
                    return (false, None);
                }
                _ => return (true, None),
            },
        };
        self.state = next;
        (true, self.push_byte(byte))
    }

    /// Appends `byte` to the token being read; an error if the message grows
    /// past its limit.
    fn push_byte(&mut self, byte: u8) -> Option<Message> {
        if self.text.len() >= self.limits.max_message {
            let err = self.error("JSON token size limit exceeded".into());
            self.reset(State::Recovery);
            return Some(Err(err));
        }
        self.text.push(byte);
        None
    }

    /// A one-byte token.
    fn single(&mut self, byte: u8, kind: Kind) -> (bool, Option<Message>) {
        if let Some(err) = self.push_byte(byte) {
            return (true, Some(err));
        }
        (true, self.finish_token(kind))
    }

    /// A token whose last byte is `byte`.
    fn finish_consumed(&mut self, byte: u8, kind: Kind) -> (bool, Option<Message>) {
        if let Some(err) = self.push_byte(byte) {
            return (true, Some(err));
        }
        (true, self.finish_token(kind))
    }

    /// The token being read is complete: account for it as QEMU's streamer
    /// does, and parse the message if it is complete.
    fn finish_token(&mut self, kind: Kind) -> Option<Message> {
        self.state = State::Start;
        let mut closed = false;
        match kind {
            Kind::LCurly => self.braces = self.braces.saturating_add(1),
            Kind::LSquare => self.brackets = self.brackets.saturating_add(1),
            Kind::RCurly => match self.braces.checked_sub(1) {
                Some(b) => self.braces = b,
                None => closed = true,
            },
            Kind::RSquare => match self.brackets.checked_sub(1) {
                Some(b) => self.brackets = b,
                None => closed = true,
            },
            _ => {}
        }
        if self.tokens.len() >= self.limits.max_tokens {
            let err = self.error("JSON token count limit exceeded".into());
            self.reset(State::Start);
            return Some(Err(err));
        }
        if self.braces.saturating_add(self.brackets) > self.limits.max_depth {
            let err = self.error("JSON nesting depth limit exceeded".into());
            self.reset(State::Start);
            return Some(Err(err));
        }
        self.tokens.push(Token {
            kind,
            start: self.token_start,
            end: self.text.len(),
        });
        self.token_start = self.text.len();
        if !closed && (self.braces > 0 || self.brackets > 0) {
            return None;
        }
        let parsed = Parser {
            text: &self.text,
            tokens: &self.tokens,
            pos: 0,
            max_depth: self.limits.max_depth,
        }
        .parse();
        let msg = parsed.map_err(|desc| self.error(format!("JSON parse error, {desc}")));
        self.reset(State::Start);
        Some(msg)
    }

    /// A lexical error at `byte` (already part of the offending token).
    fn lex_error(&mut self, byte: u8) -> Message {
        let mut stray = self
            .text
            .get(self.token_start..)
            .unwrap_or_default()
            .to_vec();
        stray.push(byte);
        let err = self.error(format!("JSON parse error, stray '{}'", shown(&stray)));
        self.reset(State::Recovery);
        Err(err)
    }

    fn error(&self, desc: String) -> InputError {
        InputError {
            desc,
            offset: self.offset,
        }
    }

    /// Drops the current message and continues in `state`.
    fn reset(&mut self, state: State) {
        self.state = state;
        self.text.clear();
        self.tokens.clear();
        self.token_start = 0;
        self.braces = 0;
        self.brackets = 0;
        // Give back what a hostile message made us allocate.
        if self.text.capacity() > KEEP_CAPACITY {
            self.text.shrink_to(KEEP_CAPACITY);
        }
        if self.tokens.capacity() > KEEP_TOKENS {
            self.tokens.shrink_to(KEEP_TOKENS);
        }
    }
}

/// Buffer space kept between messages.
const KEEP_CAPACITY: usize = 4096;
const KEEP_TOKENS: usize = 256;
/// Most bytes of an offending token quoted back in an error.
const MAX_SHOWN: usize = 32;

/// An iterator over the messages completed by one input chunk; see
/// [`Splitter::messages`].
#[derive(Debug)]
pub struct Messages<'s, 'i> {
    splitter: &'s mut Splitter,
    input: &'i [u8],
}

impl Iterator for Messages<'_, '_> {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        while !self.input.is_empty() {
            let (used, msg) = self.splitter.feed(self.input);
            self.input = self.input.get(used..).unwrap_or_default();
            if msg.is_some() {
                return msg;
            }
        }
        None
    }
}

/// Lexer states, after QEMU's `json_lexer` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    DqString,
    DqEscape,
    SqString,
    SqEscape,
    Zero,
    Digits,
    Sign,
    Mantissa,
    MantissaDigits,
    ExpE,
    ExpSign,
    ExpDigits,
    Keyword,
    Recovery,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    LCurly,
    RCurly,
    LSquare,
    RSquare,
    Comma,
    Colon,
    String,
    Integer,
    Float,
    Keyword,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

/// Recursive descent over one message's tokens (QEMU's `json-parser.c`).
/// Errors are the text after "JSON parse error, ".
struct Parser<'a> {
    text: &'a [u8],
    tokens: &'a [Token],
    pos: usize,
    max_depth: usize,
}

impl Parser<'_> {
    fn parse(mut self) -> Result<Value, String> {
        self.value(0)
    }

    fn peek(&self) -> Option<Token> {
        self.tokens.get(self.pos).copied()
    }

    fn pop(&mut self) -> Option<Token> {
        let t = self.peek()?;
        self.pos += 1;
        Some(t)
    }

    fn bytes(&self, t: Token) -> &[u8] {
        self.text.get(t.start..t.end).unwrap_or_default()
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        let Some(t) = self.peek() else {
            return Err("premature EOI".into());
        };
        match t.kind {
            Kind::LCurly | Kind::LSquare => {
                // The streamer already bounds nesting; this keeps the parser's
                // recursion bounded on its own.
                if depth >= self.max_depth {
                    return Err("nesting too deep".into());
                }
                if t.kind == Kind::LCurly {
                    self.object(depth + 1)
                } else {
                    self.array(depth + 1)
                }
            }
            Kind::String => {
                self.pos += 1;
                string(self.bytes(t)).map(Value::String)
            }
            Kind::Integer | Kind::Float => {
                self.pos += 1;
                number(self.bytes(t))
            }
            Kind::Keyword => {
                self.pos += 1;
                match self.bytes(t) {
                    b"true" => Ok(Value::Bool(true)),
                    b"false" => Ok(Value::Bool(false)),
                    b"null" => Ok(Value::Null),
                    other => Err(format!("invalid keyword '{}'", shown(other))),
                }
            }
            _ => Err("expecting value".into()),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, String> {
        self.pos += 1; // '{'
        let mut map = Map::new();
        if self.peek().map(|t| t.kind) == Some(Kind::RCurly) {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            let key = match self.pop() {
                None => return Err("premature EOI".into()),
                Some(t) if t.kind == Kind::String => string(self.bytes(t))?,
                Some(_) => return Err("key is not a string in object".into()),
            };
            match self.pop() {
                None => return Err("premature EOI".into()),
                Some(t) if t.kind == Kind::Colon => {}
                Some(_) => return Err("missing : in object pair".into()),
            }
            let value = self.value(depth)?;
            if map.contains_key(&key) {
                return Err("duplicate key".into());
            }
            map.insert(key, value);
            match self.pop() {
                None => return Err("premature EOI".into()),
                Some(t) if t.kind == Kind::Comma => {}
                Some(t) if t.kind == Kind::RCurly => return Ok(Value::Object(map)),
                Some(_) => return Err("expected separator in dict".into()),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, String> {
        self.pos += 1; // '['
        let mut list = Vec::new();
        if self.peek().map(|t| t.kind) == Some(Kind::RSquare) {
            self.pos += 1;
            return Ok(Value::Array(list));
        }
        loop {
            list.push(self.value(depth)?);
            match self.pop() {
                None => return Err("premature EOI".into()),
                Some(t) if t.kind == Kind::Comma => {}
                Some(t) if t.kind == Kind::RSquare => return Ok(Value::Array(list)),
                Some(_) => return Err("expected separator in list".into()),
            }
        }
    }
}

/// The value of a string token, quotes included in `token`: JSON's escapes plus
/// `\'`, in either kind of quotes.
fn string(token: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(token).map_err(|_| "invalid UTF-8 sequence in string")?;
    let inner = text
        .get(1..text.len().saturating_sub(1))
        .ok_or("invalid string token")?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let escaped = match chars.next() {
            Some('"') => '"',
            Some('\'') => '\'',
            Some('\\') => '\\',
            Some('/') => '/',
            Some('b') => '\u{8}',
            Some('f') => '\u{c}',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some('u') => {
                // The escape's digits as written, for messages.
                let written = chars.as_str().get(..4).unwrap_or_default();
                let unit = hex4(&mut chars)?;
                let code = if (0xd800..0xdc00).contains(&unit) {
                    // A leading surrogate must be followed by a trailing one.
                    let rest = chars.as_str();
                    let trailing = rest
                        .strip_prefix("\\u")
                        .and_then(|r| r.get(..4))
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                        .filter(|t| (0xdc00..0xe000).contains(t));
                    match trailing {
                        Some(t) => {
                            chars = rest.get(6..).unwrap_or_default().chars();
                            0x10000 + ((unit - 0xd800) << 10) + (t - 0xdc00)
                        }
                        None => {
                            return Err(format!("\\u{written} is not a valid Unicode character"))
                        }
                    }
                } else {
                    unit
                };
                char::from_u32(code)
                    .ok_or_else(|| format!("\\u{written} is not a valid Unicode character"))?
            }
            _ => return Err("invalid escape sequence in string".into()),
        };
        out.push(escaped);
    }
    Ok(out)
}

/// Four hex digits after `\u`.
fn hex4(chars: &mut std::str::Chars<'_>) -> Result<u32, String> {
    let rest = chars.as_str();
    let digits = rest
        .get(..4)
        .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()));
    let Some(digits) = digits else {
        return Err("invalid hex escape sequence in string".into());
    };
    *chars = rest.get(4..).unwrap_or_default().chars();
    u32::from_str_radix(digits, 16).map_err(|_| "invalid hex escape sequence in string".into())
}

/// A number token: a signed or unsigned 64-bit integer where it fits, else a
/// double, as QEMU reads numbers.
fn number(token: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(token).map_err(|_| "invalid number")?;
    let n: Number = text
        .parse()
        .map_err(|_| format!("number '{}' out of range", shown(token)))?;
    Ok(Value::Number(n))
}

/// Up to [`MAX_SHOWN`] bytes of `bytes` for a message, non-UTF-8 replaced.
fn shown(bytes: &[u8]) -> String {
    let cut = bytes.get(..MAX_SHOWN).unwrap_or(bytes);
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if cut.len() < bytes.len() {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all(input: &[u8]) -> Vec<Result<Value, String>> {
        let mut s = Splitter::new(QmpLimits::default());
        s.messages(input)
            .map(|m| m.map_err(|e| e.desc().to_string()))
            .collect()
    }

    #[test]
    fn values_back_to_back_without_separators() {
        let got = all(b"{\"a\":1}[2]\"s\"{\"b\":true}");
        assert_eq!(
            got,
            vec![
                Ok(json!({"a": 1})),
                Ok(json!([2])),
                Ok(json!("s")),
                Ok(json!({"b": true}))
            ]
        );
    }

    #[test]
    fn number_and_keyword_wait_for_the_next_byte() {
        let mut s = Splitter::new(QmpLimits::default());
        assert_eq!(s.messages(b"12").count(), 0);
        assert!(!s.is_idle());
        let got: Vec<_> = s.messages(b" ").collect();
        assert_eq!(got, vec![Ok(json!(12))]);
        assert!(s.is_idle());
        let got: Vec<_> = s.messages(b"true\n").collect();
        assert_eq!(got, vec![Ok(json!(true))]);
    }

    #[test]
    fn numbers_as_qemu_reads_them() {
        let got = all(b"[0, -0, 9223372036854775807, 9223372036854775808, -9223372036854775808, 18446744073709551616, 1.5, 2e3, -1E-2]");
        let v = got[0].as_ref().unwrap();
        assert!(v[0].is_i64() && v[2].is_i64() && v[4].is_i64());
        assert!(v[3].is_u64() && !v[3].is_i64());
        assert!(v[5].is_f64());
        assert_eq!(v[6], json!(1.5));
        assert_eq!(v[7], json!(2000.0));
        assert_eq!(v[8], json!(-0.01));
    }

    #[test]
    fn single_quotes_and_escapes() {
        let got = all(br#"['it\'s', 'say "hi"', "a\'b", "\u00e9\ud83d\ude00\n\/"]"#);
        assert_eq!(
            got,
            vec![Ok(json!([
                "it's",
                "say \"hi\"",
                "a'b",
                "\u{e9}\u{1f600}\n/"
            ]))]
        );
    }

    #[test]
    fn string_errors() {
        assert_eq!(
            all(br#"["\x"]"#),
            vec![Err(
                "JSON parse error, invalid escape sequence in string".into()
            )]
        );
        assert_eq!(
            all(br#"["\ud800x"]"#),
            vec![Err(
                "JSON parse error, \\ud800 is not a valid Unicode character".into()
            )]
        );
        assert_eq!(
            all(b"[\"\xc3\x28\"]"),
            vec![Err(
                "JSON parse error, invalid UTF-8 sequence in string".into()
            )]
        );
        assert_eq!(
            all(br#"["\u12g4"]"#),
            vec![Err(
                "JSON parse error, invalid hex escape sequence in string".into()
            )]
        );
    }

    #[test]
    fn parse_errors_name_the_problem() {
        assert_eq!(
            all(b"{\"execute\": }"),
            vec![Err("JSON parse error, expecting value".into())]
        );
        assert_eq!(
            all(b"{1: 2}"),
            vec![Err("JSON parse error, key is not a string in object".into())]
        );
        assert_eq!(
            all(b"{\"a\" 2}"),
            vec![Err("JSON parse error, missing : in object pair".into())]
        );
        assert_eq!(
            all(b"{\"a\": 1, \"a\": 2}"),
            vec![Err("JSON parse error, duplicate key".into())]
        );
        assert_eq!(
            all(b"{\"a\": 1 ]"),
            vec![Err("JSON parse error, expected separator in dict".into())]
        );
        assert_eq!(
            all(b"[1 }"),
            vec![Err("JSON parse error, expected separator in list".into())]
        );
        assert_eq!(
            all(b"[nul]"),
            vec![Err("JSON parse error, invalid keyword 'nul'".into())]
        );
        assert_eq!(
            all(b"}"),
            vec![Err("JSON parse error, expecting value".into())]
        );
    }

    #[test]
    fn lexical_error_skips_to_a_resync_point() {
        // '@' is a lexical error; the rest of the line up to ',' is skipped,
        // then the leftovers are messages of their own, as in QEMU.
        let got = all(b"{\"execute\": @x, \"id\"\n{\"execute\": \"stop\"}");
        assert_eq!(
            got,
            vec![
                Err("JSON parse error, stray '@'".into()),
                Err("JSON parse error, expecting value".into()),
                Ok(json!("id")),
                Ok(json!({"execute": "stop"})),
            ]
        );
        // Bad bytes inside a token are quoted with the token.
        assert_eq!(
            all(b"\"ab\x01\"\n"),
            vec![Err("JSON parse error, stray '\"ab\u{1}'".into())]
        );
        assert_eq!(all(b"01"), vec![Err("JSON parse error, stray '01'".into())]);
        assert_eq!(all(b"-x"), vec![Err("JSON parse error, stray '-x'".into())]);
    }

    #[test]
    fn control_character_forces_a_known_state() {
        // A client abandons a half-sent message with a control character.
        let got = all(b"{\"execute\": \"st\x01{\"execute\": \"stop\"}");
        assert_eq!(got.len(), 2);
        assert!(got[0].is_err());
        assert_eq!(got[1], Ok(json!({"execute": "stop"})));
    }

    #[test]
    fn oversized_message_is_dropped_without_holding_it() {
        let limits = QmpLimits::default().with_max_message(1 << 16);
        let mut s = Splitter::new(limits);
        let mut input = b"{\"execute\": \"".to_vec();
        input.extend(std::iter::repeat_n(b'a', 200_000));
        input.extend(b"\"}\n{\"execute\": \"stop\"}");
        let got: Vec<_> = s
            .messages(&input)
            .map(|m| m.map_err(|e| e.desc().to_string()))
            .collect();
        assert_eq!(got[0], Err("JSON token size limit exceeded".into()));
        assert_eq!(got.last().unwrap(), &Ok(json!({"execute": "stop"})));
        assert!(s.text.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn deep_nesting_and_token_count_are_bounded() {
        let limits = QmpLimits::default().with_max_depth(8).with_max_tokens(100);
        let mut s = Splitter::new(limits);
        let got: Vec<_> = s
            .messages(b"[[[[[[[[[1]]]]]]]]]\n")
            .map(|m| m.map_err(|e| e.desc().to_string()))
            .collect();
        assert_eq!(got[0], Err("JSON nesting depth limit exceeded".into()));
        let ok: Vec<_> = s.messages(b"[[[[[[[[1]]]]]]]]").collect();
        assert_eq!(
            ok.last().unwrap().as_ref().unwrap(),
            &json!([[[[[[[[1]]]]]]]])
        );
        let mut many = b"[".to_vec();
        for _ in 0..200 {
            many.extend(b"1,");
        }
        many.extend(b"1]");
        let got: Vec<_> = s
            .messages(&many)
            .map(|m| m.map_err(|e| e.desc().to_string()))
            .collect();
        assert_eq!(got[0], Err("JSON token count limit exceeded".into()));
    }

    #[test]
    fn same_messages_however_split() {
        let input: &[u8] = b"{'execute': 'a', 'id': [1, 2.5e1, \"x\\u00e9\"]} 17 @@ {\"b\": [true, false, null]}\x01[}\"\xff\n{\"c\":-0.5}";
        let whole = all(input);
        for size in 1..input.len() {
            let mut s = Splitter::new(QmpLimits::default());
            let mut got = Vec::new();
            for chunk in input.chunks(size) {
                got.extend(
                    s.messages(chunk)
                        .map(|m| m.map_err(|e| e.desc().to_string())),
                );
            }
            assert_eq!(got, whole, "chunk size {size}");
        }
    }

    #[test]
    fn errors_carry_the_input_offset() {
        let mut s = Splitter::new(QmpLimits::default());
        let errs: Vec<_> = s
            .messages(b"{\"a\": 1}\n  @")
            .filter_map(|m| m.err())
            .collect();
        assert_eq!(errs[0].offset(), 11);
    }
}
