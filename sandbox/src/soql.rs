//! A small SOQL: a tokenizer, a recursive-descent parser, validation against the sObject
//! schema, and evaluation over the in-memory records.
//!
//! Grammar (keywords case-insensitive):
//! ```text
//! query      := SELECT (COUNT '(' ')' | field (',' field)*) FROM object
//!               [WHERE condition] [ORDER BY order (',' order)*] [LIMIT int] [OFFSET int]
//! condition  := term (AND term)* | term (OR term)*     -- mixing needs parentheses, as in SOQL
//! term       := NOT term | '(' condition ')' | field op value | field [NOT] IN '(' value, ... ')'
//!             | field LIKE 'pattern'
//! op         := = | != | <> | < | <= | > | >=
//! value      := 'string' (\' \" \\ \n \t \% \_ escapes) | number | YYYY-MM-DD
//!             | YYYY-MM-DDThh:mm:ss(.sss)(Z|+hh:mm) | null | true | false | TODAY | YESTERDAY | TOMORROW
//! order      := field [ASC | DESC] [NULLS FIRST | NULLS LAST]
//! ```
//! Values are parsed as literals and compared, never spliced into anything: a quote inside a
//! string literal is data.

use super::salesforce::schema::{Kind, ObjectSchema};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::{Map, Value};
use std::cmp::Ordering;

/// A query error: the Salesforce error code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoqlError {
    pub code: &'static str,
    pub message: String,
}

fn malformed(message: impl Into<String>) -> SoqlError {
    SoqlError {
        code: "MALFORMED_QUERY",
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// One character of a string literal, and whether it was escaped (for LIKE's `\%` and `\_`).
type StrChars = Vec<(char, bool)>;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(StrChars),
    Num(f64),
    Date(NaiveDate),
    DateTime(DateTime<Utc>),
    Comma,
    LParen,
    RParen,
    Op(CmpOp),
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => s.clone(),
            Tok::Str(chars) => format!("'{}'", chars.iter().map(|c| c.0).collect::<String>()),
            Tok::Num(n) => n.to_string(),
            Tok::Date(d) => d.to_string(),
            Tok::DateTime(d) => d.to_rfc3339(),
            Tok::Comma => ",".into(),
            Tok::LParen => "(".into(),
            Tok::RParen => ")".into(),
            Tok::Op(op) => format!("{op:?}"),
            Tok::Eof => "<EOF>".into(),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<(Tok, usize)>, SoqlError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let tok = match c {
            ',' => {
                i += 1;
                Tok::Comma
            }
            '(' => {
                i += 1;
                Tok::LParen
            }
            ')' => {
                i += 1;
                Tok::RParen
            }
            '=' => {
                i += 1;
                Tok::Op(CmpOp::Eq)
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                i += 2;
                Tok::Op(CmpOp::Ne)
            }
            '<' => match chars.get(i + 1) {
                Some('=') => {
                    i += 2;
                    Tok::Op(CmpOp::Le)
                }
                Some('>') => {
                    i += 2;
                    Tok::Op(CmpOp::Ne)
                }
                _ => {
                    i += 1;
                    Tok::Op(CmpOp::Lt)
                }
            },
            '>' => {
                if chars.get(i + 1) == Some(&'=') {
                    i += 2;
                    Tok::Op(CmpOp::Ge)
                } else {
                    i += 1;
                    Tok::Op(CmpOp::Gt)
                }
            }
            '\'' => {
                i += 1;
                let mut value = Vec::new();
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(malformed(format!(
                                "unterminated string literal starting at column {}",
                                start + 1
                            )))
                        }
                        Some('\\') => {
                            let escaped = match chars.get(i + 1) {
                                Some('\'') => ('\'', true),
                                Some('"') => ('"', true),
                                Some('\\') => ('\\', true),
                                Some('n') => ('\n', true),
                                Some('r') => ('\r', true),
                                Some('t') => ('\t', true),
                                Some('b') => ('\u{8}', true),
                                Some('f') => ('\u{c}', true),
                                Some('%') => ('%', true),
                                Some('_') => ('_', true),
                                other => {
                                    return Err(malformed(format!(
                                        "invalid escape sequence \\{} at column {}",
                                        other.map(|c| c.to_string()).unwrap_or_default(),
                                        i + 1
                                    )))
                                }
                            };
                            value.push(escaped);
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(c) => {
                            value.push((*c, false));
                            i += 1;
                        }
                    }
                }
                Tok::Str(value)
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_ascii_alphanumeric()
                        || matches!(chars[j], '.' | '-' | ':' | '+'))
                {
                    j += 1;
                }
                let word: String = chars[i..j].iter().collect();
                i = j;
                number_or_date(&word).ok_or_else(|| {
                    malformed(format!("invalid literal `{word}` at column {}", start + 1))
                })?
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_ascii_alphanumeric() || matches!(chars[j], '_' | '.'))
                {
                    j += 1;
                }
                let word: String = chars[i..j].iter().collect();
                i = j;
                Tok::Ident(word)
            }
            other => {
                return Err(malformed(format!(
                    "unexpected character `{other}` at column {}",
                    start + 1
                )))
            }
        };
        tokens.push((tok, start));
    }
    tokens.push((Tok::Eof, chars.len()));
    Ok(tokens)
}

fn number_or_date(word: &str) -> Option<Tok> {
    if let Ok(date) = NaiveDate::parse_from_str(word, "%Y-%m-%d") {
        if word.len() == 10 {
            return Some(Tok::Date(date));
        }
    }
    if word.len() > 10 && word.as_bytes().get(10) == Some(&b'T') {
        let at = DateTime::parse_from_rfc3339(word)
            .or_else(|_| DateTime::parse_from_str(word, "%Y-%m-%dT%H:%M:%S%.f%z"))
            .ok()?;
        return Some(Tok::DateTime(at.with_timezone(&Utc)));
    }
    let valid = word
        .trim_start_matches('-')
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.');
    if valid && word.matches('.').count() <= 1 && !word.ends_with('.') {
        return word.parse::<f64>().ok().map(Tok::Num);
    }
    None
}

/// A literal value in a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Num(f64),
    Date(NaiveDate),
    DateTime(DateTime<Utc>),
    Bool(bool),
    Null,
}

/// A piece of a LIKE pattern.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LikeTok {
    /// `%`
    Any,
    /// `_`
    One,
    Char(char),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
    Cmp {
        field: String,
        op: CmpOp,
        value: Literal,
    },
    In {
        field: String,
        negated: bool,
        values: Vec<Literal>,
    },
    Like {
        field: String,
        pattern: Vec<LikeTok>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    Count,
    Fields(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderItem {
    pub field: String,
    pub descending: bool,
    pub nulls_last: bool,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub selection: Selection,
    pub object: String,
    pub condition: Option<Cond>,
    pub order: Vec<OrderItem>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
}

const KEYWORDS: &[&str] = &[
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "ORDER", "BY", "ASC", "DESC",
    "NULLS", "FIRST", "LAST", "LIMIT", "OFFSET", "NULL", "TRUE", "FALSE", "GROUP", "HAVING",
];

struct Parser {
    tokens: Vec<(Tok, usize)>,
    pos: usize,
    today: NaiveDate,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos.min(self.tokens.len() - 1)].0
    }

    fn column(&self) -> usize {
        self.tokens[self.pos.min(self.tokens.len() - 1)].1 + 1
    }

    fn next(&mut self) -> Tok {
        let tok = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        tok
    }

    fn unexpected(&self) -> SoqlError {
        malformed(format!(
            "unexpected token: '{}' at column {}",
            self.peek().describe(),
            self.column()
        ))
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s.eq_ignore_ascii_case(word))
    }

    fn eat_keyword(&mut self, word: &str) -> bool {
        if self.is_keyword(word) {
            self.next();
            true
        } else {
            false
        }
    }

    fn expect_keyword(&mut self, word: &str) -> Result<(), SoqlError> {
        if self.eat_keyword(word) {
            Ok(())
        } else {
            Err(malformed(format!(
                "expected {word} but found '{}' at column {}",
                self.peek().describe(),
                self.column()
            )))
        }
    }

    fn expect(&mut self, tok: Tok) -> Result<(), SoqlError> {
        if *self.peek() == tok {
            self.next();
            Ok(())
        } else {
            Err(malformed(format!(
                "expected '{}' but found '{}' at column {}",
                tok.describe(),
                self.peek().describe(),
                self.column()
            )))
        }
    }

    fn identifier(&mut self) -> Result<String, SoqlError> {
        match self.peek().clone() {
            Tok::Ident(word) if !KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(&word)) => {
                self.next();
                Ok(word)
            }
            _ => Err(self.unexpected()),
        }
    }

    fn integer(&mut self) -> Result<usize, SoqlError> {
        match *self.peek() {
            Tok::Num(n) if n >= 0.0 && n.fract() == 0.0 && n <= 1e9 => {
                self.next();
                Ok(n as usize)
            }
            _ => Err(self.unexpected()),
        }
    }

    fn query(&mut self) -> Result<Query, SoqlError> {
        self.expect_keyword("SELECT")?;
        let selection = if self.is_keyword("COUNT") {
            self.next();
            self.expect(Tok::LParen)?;
            self.expect(Tok::RParen)?;
            Selection::Count
        } else {
            let mut fields = vec![self.identifier()?];
            while *self.peek() == Tok::Comma {
                self.next();
                fields.push(self.identifier()?);
            }
            Selection::Fields(fields)
        };
        self.expect_keyword("FROM")?;
        let object = self.identifier()?;
        let condition = if self.eat_keyword("WHERE") {
            Some(self.condition()?)
        } else {
            None
        };
        let mut order = Vec::new();
        if self.eat_keyword("ORDER") {
            self.expect_keyword("BY")?;
            loop {
                let field = self.identifier()?;
                let descending = if self.eat_keyword("DESC") {
                    true
                } else {
                    self.eat_keyword("ASC");
                    false
                };
                let mut nulls_last = descending;
                if self.eat_keyword("NULLS") {
                    if self.eat_keyword("LAST") {
                        nulls_last = true;
                    } else {
                        self.expect_keyword("FIRST")?;
                        nulls_last = false;
                    }
                }
                order.push(OrderItem {
                    field,
                    descending,
                    nulls_last,
                });
                if *self.peek() != Tok::Comma {
                    break;
                }
                self.next();
            }
        }
        let limit = if self.eat_keyword("LIMIT") {
            Some(self.integer()?)
        } else {
            None
        };
        let offset = if self.eat_keyword("OFFSET") {
            Some(self.integer()?)
        } else {
            None
        };
        if *self.peek() != Tok::Eof {
            return Err(self.unexpected());
        }
        Ok(Query {
            selection,
            object,
            condition,
            order,
            limit,
            offset,
        })
    }

    fn condition(&mut self) -> Result<Cond, SoqlError> {
        let first = self.term()?;
        let mut terms = vec![first];
        let mut connector: Option<&'static str> = None;
        loop {
            let this = if self.is_keyword("AND") {
                "AND"
            } else if self.is_keyword("OR") {
                "OR"
            } else {
                break;
            };
            if connector.is_some_and(|c| c != this) {
                return Err(malformed(format!(
                    "unexpected token: '{this}' at column {}: use parentheses when mixing AND and OR",
                    self.column()
                )));
            }
            connector = Some(this);
            self.next();
            terms.push(self.term()?);
        }
        Ok(match connector {
            None => terms.pop().ok_or_else(|| malformed("empty condition"))?,
            Some("AND") => Cond::And(terms),
            Some(_) => Cond::Or(terms),
        })
    }

    fn term(&mut self) -> Result<Cond, SoqlError> {
        if self.eat_keyword("NOT") {
            return Ok(Cond::Not(Box::new(self.term()?)));
        }
        if *self.peek() == Tok::LParen {
            self.next();
            let inner = self.condition()?;
            self.expect(Tok::RParen)?;
            return Ok(inner);
        }
        let field = self.identifier()?;
        if self.eat_keyword("LIKE") {
            let Tok::Str(chars) = self.peek().clone() else {
                return Err(malformed(format!(
                    "LIKE needs a string pattern at column {}",
                    self.column()
                )));
            };
            self.next();
            let pattern = chars
                .into_iter()
                .map(|(c, escaped)| match (c, escaped) {
                    ('%', false) => LikeTok::Any,
                    ('_', false) => LikeTok::One,
                    (c, _) => LikeTok::Char(c),
                })
                .collect();
            return Ok(Cond::Like { field, pattern });
        }
        let negated = self.eat_keyword("NOT");
        if negated || self.is_keyword("IN") {
            self.expect_keyword("IN")?;
            self.expect(Tok::LParen)?;
            let mut values = vec![self.value()?];
            while *self.peek() == Tok::Comma {
                self.next();
                values.push(self.value()?);
            }
            self.expect(Tok::RParen)?;
            return Ok(Cond::In {
                field,
                negated,
                values,
            });
        }
        let op = match *self.peek() {
            Tok::Op(op) => op,
            _ => return Err(self.unexpected()),
        };
        self.next();
        let value = self.value()?;
        Ok(Cond::Cmp { field, op, value })
    }

    fn value(&mut self) -> Result<Literal, SoqlError> {
        let literal = match self.peek().clone() {
            Tok::Str(chars) => Literal::Str(chars.into_iter().map(|(c, _)| c).collect()),
            Tok::Num(n) => Literal::Num(n),
            Tok::Date(d) => Literal::Date(d),
            Tok::DateTime(d) => Literal::DateTime(d),
            Tok::Ident(word) => match word.to_ascii_uppercase().as_str() {
                "NULL" => Literal::Null,
                "TRUE" => Literal::Bool(true),
                "FALSE" => Literal::Bool(false),
                "TODAY" => Literal::Date(self.today),
                "YESTERDAY" => Literal::Date(self.today - Duration::days(1)),
                "TOMORROW" => Literal::Date(self.today + Duration::days(1)),
                _ => return Err(self.unexpected()),
            },
            _ => return Err(self.unexpected()),
        };
        self.next();
        Ok(literal)
    }
}

/// Parses `text`; `today` gives TODAY, YESTERDAY and TOMORROW their dates.
pub fn parse(text: &str, today: NaiveDate) -> Result<Query, SoqlError> {
    let tokens = tokenize(text)?;
    Parser {
        tokens,
        pos: 0,
        today,
    }
    .query()
}

fn invalid_field(schema: &ObjectSchema, name: &str) -> SoqlError {
    let message = if name.contains('.') {
        format!(
            "Didn't understand relationship '{}' in field path. The sandbox supports no \
             relationship queries.",
            name.split('.').next().unwrap_or(name)
        )
    } else {
        format!("No such column '{name}' on entity '{}'.", schema.name)
    };
    SoqlError {
        code: "INVALID_FIELD",
        message,
    }
}

fn resolve(schema: &ObjectSchema, name: &mut String) -> Result<Kind, SoqlError> {
    let field = schema
        .field(name)
        .ok_or_else(|| invalid_field(schema, name))?;
    *name = field.name.to_string();
    Ok(field.kind)
}

fn type_error(field: &str, kind: Kind, literal: &Literal) -> SoqlError {
    let expected = match kind {
        Kind::Date => "a date (YYYY-MM-DD, not enclosed in quotes)".to_string(),
        Kind::DateTime => "a datetime (YYYY-MM-DDThh:mm:ssZ, not enclosed in quotes)".to_string(),
        Kind::Number(_) => "a number".to_string(),
        Kind::Bool => "true or false".to_string(),
        _ => "a string in single quotes".to_string(),
    };
    SoqlError {
        code: "INVALID_QUERY_FILTER_OPERATOR",
        message: format!(
            "value of filter criterion for field '{field}' must be {expected}, got {literal:?}"
        ),
    }
}

fn check_literal(field: &str, kind: Kind, literal: &Literal) -> Result<(), SoqlError> {
    let ok = match (kind, literal) {
        (_, Literal::Null) => true,
        (Kind::Date, Literal::Date(_)) => true,
        (Kind::DateTime, Literal::DateTime(_)) => true,
        (Kind::Number(_), Literal::Num(_)) => true,
        (Kind::Bool, Literal::Bool(_)) => true,
        (k, Literal::Str(_)) => k.is_text() || k.is_id(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(type_error(field, kind, literal))
    }
}

fn validate_cond(schema: &ObjectSchema, cond: &mut Cond) -> Result<(), SoqlError> {
    match cond {
        Cond::And(terms) | Cond::Or(terms) => {
            terms.iter_mut().try_for_each(|t| validate_cond(schema, t))
        }
        Cond::Not(inner) => validate_cond(schema, inner),
        Cond::Cmp { field, op, value } => {
            let kind = resolve(schema, field)?;
            check_literal(field, kind, value)?;
            let ordering = !matches!(op, CmpOp::Eq | CmpOp::Ne);
            if ordering && (*value == Literal::Null || kind == Kind::Bool) {
                return Err(SoqlError {
                    code: "INVALID_QUERY_FILTER_OPERATOR",
                    message: format!("invalid operator on field '{field}' for this value"),
                });
            }
            Ok(())
        }
        Cond::In { field, values, .. } => {
            let kind = resolve(schema, field)?;
            values
                .iter()
                .try_for_each(|v| check_literal(field, kind, v))
        }
        Cond::Like { field, .. } => {
            let kind = resolve(schema, field)?;
            if kind.is_text() || kind.is_id() {
                Ok(())
            } else {
                Err(SoqlError {
                    code: "INVALID_QUERY_FILTER_OPERATOR",
                    message: format!(
                        "invalid operator on field '{field}': LIKE needs a text field"
                    ),
                })
            }
        }
    }
}

/// Checks the query against `schema` and rewrites field names to their API spelling.
pub fn validate(query: &mut Query, schema: &ObjectSchema) -> Result<(), SoqlError> {
    query.object = schema.name.to_string();
    if let Selection::Fields(fields) = &mut query.selection {
        let mut seen: Vec<String> = Vec::new();
        for field in fields.iter_mut() {
            resolve(schema, field)?;
            if seen.contains(field) {
                return Err(SoqlError {
                    code: "MALFORMED_QUERY",
                    message: format!("duplicate field selected: {field}"),
                });
            }
            seen.push(field.clone());
        }
    }
    if let Some(cond) = &mut query.condition {
        validate_cond(schema, cond)?;
    }
    for item in &mut query.order {
        resolve(schema, &mut item.field)?;
    }
    if query.limit.is_some_and(|n| n > 50_000) {
        return Err(malformed("LIMIT must be at most 50000"));
    }
    if query.offset.is_some_and(|n| n > 2_000) {
        return Err(SoqlError {
            code: "NUMBER_OUTSIDE_VALID_RANGE",
            message: "Maximum SOQL offset allowed is 2000".into(),
        });
    }
    Ok(())
}

fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(text))
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// Compares a stored value with a literal; `None` when either is null or they do not compare.
fn compare(kind: Kind, stored: &Value, literal: &Literal) -> Option<Ordering> {
    match (stored, literal) {
        (Value::Null, _) | (_, Literal::Null) => None,
        (Value::String(s), Literal::Str(l)) if kind.is_id() => {
            if l.len() == 15 {
                Some(s.get(..15).unwrap_or(s).cmp(l.as_str()))
            } else {
                Some(s.as_str().cmp(l.as_str()))
            }
        }
        (Value::String(s), Literal::Str(l)) => Some(s.to_lowercase().cmp(&l.to_lowercase())),
        (Value::Number(n), Literal::Num(l)) => n.as_f64()?.partial_cmp(l),
        (Value::String(s), Literal::Date(l)) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .map(|d| d.cmp(l)),
        (Value::String(s), Literal::DateTime(l)) => parse_datetime(s).map(|d| d.cmp(l)),
        (Value::Bool(b), Literal::Bool(l)) => Some(b.cmp(l)),
        _ => None,
    }
}

fn equals(kind: Kind, stored: &Value, literal: &Literal) -> bool {
    match literal {
        Literal::Null => stored.is_null(),
        _ => compare(kind, stored, literal) == Some(Ordering::Equal),
    }
}

fn like(pattern: &[LikeTok], text: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((LikeTok::Any, rest)) => (0..=text.len()).any(|skip| like(rest, &text[skip..])),
        Some((LikeTok::One, rest)) => !text.is_empty() && like(rest, &text[1..]),
        Some((LikeTok::Char(c), rest)) => {
            text.first()
                .is_some_and(|t| t.to_lowercase().eq(c.to_lowercase()))
                && like(rest, &text[1..])
        }
    }
}

fn kind_of(schema: &ObjectSchema, field: &str) -> Kind {
    schema.field(field).map(|f| f.kind).unwrap_or(Kind::Text(0))
}

fn matches(schema: &ObjectSchema, cond: &Cond, record: &Map<String, Value>) -> bool {
    let get = |field: &str| record.get(field).unwrap_or(&Value::Null);
    match cond {
        Cond::And(terms) => terms.iter().all(|t| matches(schema, t, record)),
        Cond::Or(terms) => terms.iter().any(|t| matches(schema, t, record)),
        Cond::Not(inner) => !matches(schema, inner, record),
        Cond::Cmp { field, op, value } => {
            let kind = kind_of(schema, field);
            let stored = get(field);
            match op {
                CmpOp::Eq => equals(kind, stored, value),
                CmpOp::Ne => !equals(kind, stored, value),
                _ => match compare(kind, stored, value) {
                    None => false,
                    Some(ordering) => match op {
                        CmpOp::Lt => ordering == Ordering::Less,
                        CmpOp::Le => ordering != Ordering::Greater,
                        CmpOp::Gt => ordering == Ordering::Greater,
                        _ => ordering != Ordering::Less,
                    },
                },
            }
        }
        Cond::In {
            field,
            negated,
            values,
        } => {
            let kind = kind_of(schema, field);
            let found = values.iter().any(|v| equals(kind, get(field), v));
            found != *negated
        }
        Cond::Like { field, pattern } => match get(field) {
            Value::String(s) => like(pattern, &s.chars().collect::<Vec<_>>()),
            _ => false,
        },
    }
}

fn order_values(kind: Kind, a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::String(x), Value::String(y)) if kind.is_text() => {
            x.to_lowercase().cmp(&y.to_lowercase())
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

/// The records of a validated query, filtered, ordered and paged.
pub fn run<'r>(
    query: &Query,
    schema: &ObjectSchema,
    records: impl Iterator<Item = &'r Map<String, Value>>,
) -> Vec<&'r Map<String, Value>> {
    let mut rows: Vec<&Map<String, Value>> = records
        .filter(|r| {
            query
                .condition
                .as_ref()
                .is_none_or(|cond| matches(schema, cond, r))
        })
        .collect();
    if !query.order.is_empty() {
        rows.sort_by(|a, b| {
            for item in &query.order {
                let kind = kind_of(schema, &item.field);
                let x = a.get(&item.field).unwrap_or(&Value::Null);
                let y = b.get(&item.field).unwrap_or(&Value::Null);
                let ordering = match (x.is_null(), y.is_null()) {
                    (true, true) => Ordering::Equal,
                    (true, false) => {
                        if item.nulls_last {
                            Ordering::Greater
                        } else {
                            Ordering::Less
                        }
                    }
                    (false, true) => {
                        if item.nulls_last {
                            Ordering::Less
                        } else {
                            Ordering::Greater
                        }
                    }
                    (false, false) => {
                        let o = order_values(kind, x, y);
                        if item.descending {
                            o.reverse()
                        } else {
                            o
                        }
                    }
                };
                if ordering != Ordering::Equal {
                    return ordering;
                }
            }
            Ordering::Equal
        });
    }
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(usize::MAX);
    rows.into_iter().skip(offset).take(limit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::salesforce::schema::{BOOKING, CONTACT};

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 25).expect("date")
    }

    #[test]
    fn parses_a_full_query() {
        let q = parse(
            "select Id, Name from Booking__c where (Status__c = 'Reserved' or Status__c = 'Checked In') \
             and Check_In_Date__c <= TODAY order by Check_In_Date__c desc nulls last limit 5 offset 1",
            today(),
        )
        .expect("parses");
        assert_eq!(
            q.selection,
            Selection::Fields(vec!["Id".into(), "Name".into()])
        );
        assert_eq!(q.limit, Some(5));
        assert_eq!(q.offset, Some(1));
        assert!(q.order[0].descending && q.order[0].nulls_last);
        let Some(Cond::And(terms)) = &q.condition else {
            panic!("and expected: {:?}", q.condition)
        };
        assert!(matches!(terms[0], Cond::Or(_)));
        assert_eq!(
            terms[1],
            Cond::Cmp {
                field: "Check_In_Date__c".into(),
                op: CmpOp::Le,
                value: Literal::Date(today())
            }
        );
    }

    #[test]
    fn escaped_quotes_stay_inside_the_literal() {
        let q = parse(
            r"SELECT Id FROM Contact WHERE Email = 'x\' OR Email != \''",
            today(),
        )
        .expect("parses");
        assert_eq!(
            q.condition,
            Some(Cond::Cmp {
                field: "Email".into(),
                op: CmpOp::Eq,
                value: Literal::Str("x' OR Email != '".into())
            })
        );
    }

    #[test]
    fn malformed_queries_are_refused() {
        for bad in [
            "",
            "SELECT FROM Contact",
            "SELECT Id Contact",
            "SELECT Id FROM Contact WHERE",
            "SELECT Id FROM Contact WHERE Email = 'unterminated",
            "SELECT Id FROM Contact WHERE Email = 'a' AND Phone = 'b' OR Name = 'c'",
            "SELECT Id FROM Contact LIMIT -1",
            "SELECT Id FROM Contact LIMIT 5 extra",
            "SELECT Id FROM Contact WHERE Email IN ()",
            "SELECT Id FROM Contact WHERE Email == 'a'",
            "SELECT Id FROM Contact; DELETE",
            "SELECT Id FROM Contact WHERE Email = 'a\\q'",
        ] {
            let error = parse(bad, today()).expect_err(bad);
            assert_eq!(error.code, "MALFORMED_QUERY", "{bad}: {error:?}");
        }
    }

    #[test]
    fn validation_checks_fields_and_literal_types() {
        let mut q = parse("SELECT id, email FROM contact", today()).expect("parses");
        validate(&mut q, &CONTACT).expect("valid");
        assert_eq!(
            q.selection,
            Selection::Fields(vec!["Id".into(), "Email".into()])
        );
        let mut q = parse("SELECT Nope__c FROM Contact", today()).expect("parses");
        assert_eq!(
            validate(&mut q, &CONTACT).expect_err("invalid").code,
            "INVALID_FIELD"
        );
        let mut q = parse(
            "SELECT Id FROM Booking__c WHERE Check_In_Date__c = '2026-11-25'",
            today(),
        )
        .expect("parses");
        assert_eq!(
            validate(&mut q, &BOOKING).expect_err("quoted date").code,
            "INVALID_QUERY_FILTER_OPERATOR"
        );
    }

    #[test]
    fn like_patterns_are_case_insensitive_with_escapes() {
        let chars = |s: &str| s.chars().collect::<Vec<_>>();
        let pattern = |s: &str| match parse(
            &format!("SELECT Id FROM Contact WHERE Email LIKE '{s}'"),
            today(),
        )
        .expect("parses")
        .condition
        {
            Some(Cond::Like { pattern, .. }) => pattern,
            other => panic!("{other:?}"),
        };
        assert!(like(&pattern("emma%"), &chars("Emma.Johnson@example.com")));
        assert!(like(&pattern("%@EXAMPLE.com"), &chars("emma@example.com")));
        assert!(like(&pattern("a_c"), &chars("abc")));
        assert!(!like(&pattern(r"a\_c"), &chars("abc")));
        assert!(like(&pattern(r"100\%"), &chars("100%")));
    }

    #[test]
    fn arbitrary_token_soup_never_panics_and_errors_are_typed() {
        use crate::state::{SandboxState, SplitMix};
        let state = SandboxState::at(1, today());
        let pieces = [
            "SELECT",
            "select",
            "Id",
            "Name",
            "Email",
            "COUNT",
            "(",
            ")",
            ",",
            "FROM",
            "Contact",
            "Booking__c",
            "WHERE",
            "AND",
            "OR",
            "NOT",
            "IN",
            "LIKE",
            "=",
            "!=",
            "<",
            ">=",
            "<>",
            "'",
            "'a'",
            "'\\'",
            "\\",
            "'%x_'",
            "2026-11-25",
            "2026-13-45",
            "-",
            "1",
            "1.5",
            "-3",
            "null",
            "TODAY",
            "true",
            "ORDER",
            "BY",
            "DESC",
            "NULLS",
            "LAST",
            "LIMIT",
            "OFFSET",
            "Check_In_Date__c",
            "Floor__c",
            "Status__c",
            ";",
            "@",
            "a.b",
            " ",
            "\n",
            "é",
            "Email = 'x'",
            "Name LIKE 'a%'",
            "Floor__c IN (1, 2)",
            "CreatedDate < 2030-01-01T00:00:00Z",
        ];
        let mut rng = SplitMix::new(42);
        let mut parsed = 0;
        for _ in 0..20_000 {
            let len = 1 + (rng.next_u64() % 14) as usize;
            let mut text = String::new();
            if rng.next_u64().is_multiple_of(2) {
                text.push_str("SELECT Id FROM Contact WHERE ");
            }
            for _ in 0..len {
                text.push_str(pieces[(rng.next_u64() % pieces.len() as u64) as usize]);
                if !rng.next_u64().is_multiple_of(3) {
                    text.push(' ');
                }
            }
            match parse(&text, today()) {
                Ok(mut query) => {
                    parsed += 1;
                    let schema = crate::salesforce::schema::object(&query.object);
                    if let Some(schema) = schema {
                        if validate(&mut query, schema).is_ok() {
                            run(&query, schema, state.salesforce.all(schema));
                        }
                    }
                }
                Err(e) => assert_eq!(e.code, "MALFORMED_QUERY", "{text}: {e:?}"),
            }
        }
        assert!(parsed > 50, "only {parsed} of the random queries parsed");
    }
}
