//! The `calculator` tool: exact arithmetic on a small expression language, parsed by a
//! tokenizer and a precedence-climbing parser of our own and evaluated on rationals. The
//! model's text is never run as code.
//!
//! The language: numbers (`42`, `3.25`, `.5`, `1e3`, `2.5E-2`), `+ - * /`, `^` (also `**`),
//! unary minus and plus, parentheses, spaces anywhere between tokens. `×`, `÷` and `−` are
//! read as `*`, `/` and `-`, as models sometimes write them. Precedence, highest first:
//! `^` (right-associative, so `2^3^2` is `2^9`), unary minus (so `-2^2` is `-4` and `2^-1`
//! is `1/2`), `* /`, `+ -` (left-associative).
//!
//! Values are fractions of two `i128`s kept in lowest terms, so `0.1 + 0.2` is exactly
//! `0.3`; anything that would not fit is refused with [`ToolError::TooLarge`] instead of
//! being rounded. The input length, the nesting depth and the exponent are bounded, so no
//! expression can allocate without limit, overflow the stack or spin.

use std::cmp::Ordering;
use std::fmt;

use super::ToolError;

/// Characters an expression may have: far more than any arithmetic a model asks for, and
/// small enough that tokens and recursion stay tiny.
pub const MAX_EXPRESSION_CHARS: usize = 1_000;

/// Parentheses and unary signs nested at most this deep, so a run of `(((…` or `----…`
/// cannot overflow the stack of the thread that evaluates it.
pub const MAX_NESTING: usize = 64;

/// Largest exponent magnitude `^` accepts. Beyond it every base other than 0 and ±1
/// overflows `i128` anyway; the bound keeps the error message about the exponent.
pub const MAX_EXPONENT: i128 = 10_000;

/// Largest magnitude of a number's `e` exponent (`1e38` is the last power of ten an `i128`
/// holds).
const MAX_SCIENTIFIC_EXPONENT: u32 = 38;

/// Significant digits of the decimal approximation shown beside a fraction that has no
/// finite decimal form (`1/3 ≈ 0.333333333333`).
pub const APPROXIMATION_DIGITS: usize = 12;

/// Evaluates `expression` exactly and formats the result: an integer (`1024`), a finite
/// decimal (`0.3`), or a fraction in lowest terms with a decimal approximation
/// (`1/3 ≈ 0.333333333333`).
pub fn calculate(expression: &str) -> Result<String, ToolError> {
    Ok(evaluate(expression)?.to_string())
}

/// Evaluates `expression` to an exact fraction.
pub fn evaluate(expression: &str) -> Result<Rational, ToolError> {
    let chars = expression.chars().count();
    if chars > MAX_EXPRESSION_CHARS {
        return Err(ToolError::ExpressionTooLong {
            chars,
            limit: MAX_EXPRESSION_CHARS,
        });
    }
    let tokens = tokenize(expression)?;
    let mut parser = Parser {
        tokens: &tokens,
        next: 0,
        depth: 0,
        end: chars + 1,
    };
    if tokens.is_empty() {
        return Err(parse_error(1, "the expression is empty"));
    }
    let value = parser.expression(0)?;
    if let Some(token) = parser.peek() {
        let problem = match token.kind {
            TokenKind::Close => "a `)` without a matching `(`".to_owned(),
            _ => format!("expected an operator, found {}", token.kind),
        };
        return Err(parse_error(token.position, problem));
    }
    Ok(value)
}

/// A fraction in lowest terms with a positive denominator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rational {
    numerator: i128,
    denominator: i128,
}

impl Rational {
    /// `numerator / denominator` in lowest terms.
    pub fn new(numerator: i128, denominator: i128) -> Result<Self, ToolError> {
        if denominator == 0 {
            return Err(ToolError::DivisionByZero);
        }
        let g = gcd(numerator, denominator);
        let (mut n, mut d) = (numerator / g, denominator / g);
        if d < 0 {
            n = n.checked_neg().ok_or(ToolError::TooLarge)?;
            d = d.checked_neg().ok_or(ToolError::TooLarge)?;
        }
        Ok(Self {
            numerator: n,
            denominator: d,
        })
    }

    pub fn integer(value: i128) -> Self {
        Self {
            numerator: value,
            denominator: 1,
        }
    }

    pub fn numerator(self) -> i128 {
        self.numerator
    }

    pub fn denominator(self) -> i128 {
        self.denominator
    }

    fn is_zero(self) -> bool {
        self.numerator == 0
    }

    fn neg(self) -> Result<Self, ToolError> {
        Ok(Self {
            numerator: self.numerator.checked_neg().ok_or(ToolError::TooLarge)?,
            denominator: self.denominator,
        })
    }

    fn add(self, other: Self) -> Result<Self, ToolError> {
        // Over the least common denominator, so sums of like fractions stay small.
        let g = gcd(self.denominator, other.denominator);
        let left = other.denominator / g;
        let right = self.denominator / g;
        let n = mul(self.numerator, left)?
            .checked_add(mul(other.numerator, right)?)
            .ok_or(ToolError::TooLarge)?;
        Self::new(n, mul(self.denominator, left)?)
    }

    fn sub(self, other: Self) -> Result<Self, ToolError> {
        self.add(other.neg()?)
    }

    fn mul(self, other: Self) -> Result<Self, ToolError> {
        // Cancel across before multiplying, so a product in lowest terms that fits is never
        // refused because its unreduced form would not.
        let a = gcd(self.numerator, other.denominator);
        let b = gcd(other.numerator, self.denominator);
        let n = mul(self.numerator / a, other.numerator / b)?;
        let d = mul(self.denominator / b, other.denominator / a)?;
        Self::new(n, d)
    }

    fn div(self, other: Self) -> Result<Self, ToolError> {
        if other.is_zero() {
            return Err(ToolError::DivisionByZero);
        }
        self.mul(Self::new(other.denominator, other.numerator)?)
    }

    /// `self ^ exponent` for an integer exponent of at most [`MAX_EXPONENT`].
    fn pow(self, exponent: Self) -> Result<Self, ToolError> {
        if exponent.denominator != 1 {
            return Err(ToolError::ExponentNotInteger {
                exponent: exponent.to_string(),
            });
        }
        let e = exponent.numerator;
        // 0, 1 and -1 stay small whatever the exponent.
        if self.is_zero() {
            return match e.cmp(&0) {
                Ordering::Less => Err(ToolError::DivisionByZero),
                Ordering::Equal => Ok(Self::integer(1)),
                Ordering::Greater => Ok(self),
            };
        }
        if self.denominator == 1 && (self.numerator == 1 || self.numerator == -1) {
            return Ok(if e % 2 == 0 { Self::integer(1) } else { self });
        }
        if e.abs() > MAX_EXPONENT {
            return Err(ToolError::ExponentTooLarge {
                exponent: e,
                limit: MAX_EXPONENT,
            });
        }
        let power = u32::try_from(e.unsigned_abs()).map_err(|_| ToolError::TooLarge)?;
        let n = self
            .numerator
            .checked_pow(power)
            .ok_or(ToolError::TooLarge)?;
        let d = self
            .denominator
            .checked_pow(power)
            .ok_or(ToolError::TooLarge)?;
        if e < 0 {
            Self::new(d, n)
        } else {
            Self::new(n, d)
        }
    }

    /// Whether the decimal form ends: the denominator has no prime factors but 2 and 5.
    fn terminates(self) -> bool {
        let mut d = self.denominator;
        while d % 2 == 0 {
            d /= 2;
        }
        while d % 5 == 0 {
            d /= 5;
        }
        d == 1
    }
}

impl fmt::Display for Rational {
    /// `1024`, `-0.3`, or `1/3 ≈ 0.333333333333`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.numerator < 0 { "-" } else { "" };
        let n = self.numerator.unsigned_abs();
        let d = self.denominator.unsigned_abs();
        if d == 1 {
            return write!(f, "{sign}{n}");
        }
        if self.terminates() {
            // A denominator of 2^a·5^b has at most max(a, b) ≤ 127 decimals.
            return write!(f, "{sign}{}", decimal(n, d, None));
        }
        write!(
            f,
            "{sign}{n}/{d} ≈ {sign}{}",
            decimal(n, d, Some(APPROXIMATION_DIGITS))
        )
    }
}

/// `n / d` in decimal: exact when `significant` is `None` (the caller knows it ends),
/// else rounded half up to that many significant digits. Trailing zeros are dropped.
fn decimal(n: u128, d: u128, significant: Option<usize>) -> String {
    let integer = n / d;
    let mut remainder = n % d;
    let mut digits: Vec<u8> = Vec::new();
    let whole_digits = if integer == 0 {
        0
    } else {
        integer.to_string().len()
    };
    let mut seen_nonzero = integer != 0;
    let mut counted = whole_digits;
    let mut round_up = false;
    while remainder != 0 {
        let (digit, rest) = times_ten_divmod(remainder, d);
        if let Some(limit) = significant {
            if counted >= limit {
                round_up = digit >= 5;
                break;
            }
        }
        digits.push(digit);
        remainder = rest;
        seen_nonzero |= digit != 0;
        if seen_nonzero {
            counted += 1;
        }
    }
    let mut integer = integer;
    if round_up {
        // Carry from the last digit up, possibly into the integer part.
        let mut carry = true;
        for digit in digits.iter_mut().rev() {
            if *digit == 9 {
                *digit = 0;
            } else {
                *digit += 1;
                carry = false;
                break;
            }
        }
        if carry {
            integer += 1;
        }
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    let mut text = integer.to_string();
    if !digits.is_empty() {
        text.push('.');
        text.extend(digits.iter().map(|digit| char::from(b'0' + digit)));
    }
    text
}

/// `(10·r) / d` and `(10·r) mod d` for `r < d`, without overflowing when `10·r` would not
/// fit in a `u128` (`d` can be up to `i128::MAX`).
fn times_ten_divmod(r: u128, d: u128) -> (u8, u128) {
    let mut digit = 0;
    let mut acc: u128 = 0;
    for _ in 0..10 {
        // acc < d and r < d, so acc + r < 2·d ≤ u128::MAX.
        acc += r;
        if acc >= d {
            acc -= d;
            digit += 1;
        }
    }
    (digit, acc)
}

fn gcd(a: i128, b: i128) -> i128 {
    let (mut a, mut b) = (a.unsigned_abs(), b.unsigned_abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    // Both operands come from values in lowest terms or from an i128, so the gcd of two
    // i128s fits unless both are i128::MIN; 1 keeps the division harmless then.
    i128::try_from(a).ok().filter(|g| *g != 0).unwrap_or(1)
}

fn mul(a: i128, b: i128) -> Result<i128, ToolError> {
    a.checked_mul(b).ok_or(ToolError::TooLarge)
}

fn parse_error(position: usize, problem: impl Into<String>) -> ToolError {
    ToolError::Parse {
        position,
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TokenKind {
    Number(Rational),
    Plus,
    Minus,
    Times,
    Divide,
    Power,
    Open,
    Close,
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(value) => write!(f, "the number {value}"),
            Self::Plus => f.write_str("`+`"),
            Self::Minus => f.write_str("`-`"),
            Self::Times => f.write_str("`*`"),
            Self::Divide => f.write_str("`/`"),
            Self::Power => f.write_str("`^`"),
            Self::Open => f.write_str("`(`"),
            Self::Close => f.write_str("`)`"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: TokenKind,
    /// 1-based character position in the expression, for error messages.
    position: usize,
}

fn tokenize(expression: &str) -> Result<Vec<Token>, ToolError> {
    let chars: Vec<char> = expression.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let position = i + 1;
        let single = match c {
            '+' => Some(TokenKind::Plus),
            '-' | '−' => Some(TokenKind::Minus),
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 1;
                Some(TokenKind::Power)
            }
            '*' | '×' => Some(TokenKind::Times),
            '/' | '÷' => Some(TokenKind::Divide),
            '^' => Some(TokenKind::Power),
            '(' => Some(TokenKind::Open),
            ')' => Some(TokenKind::Close),
            _ => None,
        };
        if let Some(kind) = single {
            tokens.push(Token { kind, position });
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            let (value, next) = number(&chars, i)?;
            tokens.push(Token {
                kind: TokenKind::Number(value),
                position,
            });
            i = next;
        } else {
            let problem = if c == ',' {
                "`,` is not allowed: write numbers without thousands separators, with `.` \
                 for decimals"
                    .to_owned()
            } else if c.is_alphabetic() || c == '_' {
                let word: String = chars[i..]
                    .iter()
                    .take_while(|c| c.is_alphanumeric() || **c == '_')
                    .collect();
                format!("unexpected `{word}`: only numbers, + - * / ^ and parentheses are allowed")
            } else {
                format!("unexpected `{c}`: only numbers, + - * / ^ and parentheses are allowed")
            };
            return Err(parse_error(position, problem));
        }
    }
    Ok(tokens)
}

/// Reads the number starting at `chars[start]`: digits, an optional fraction, an optional
/// `e` exponent. Returns its exact value and the index after it.
fn number(chars: &[char], start: usize) -> Result<(Rational, usize), ToolError> {
    let digits_from = |mut i: usize| {
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let int_end = digits_from(start);
    let mut text: String = chars[start..int_end].iter().collect();
    let mut end = int_end;
    let mut scale: i32 = 0;
    if chars.get(end) == Some(&'.') {
        let frac_end = digits_from(end + 1);
        if frac_end == end + 1 {
            return Err(parse_error(end + 2, "expected a digit after `.`"));
        }
        text.extend(&chars[end + 1..frac_end]);
        scale = -i32::try_from(frac_end - end - 1).unwrap_or(i32::MAX);
        end = frac_end;
    }
    if matches!(chars.get(end), Some('e' | 'E')) {
        let mut i = end + 1;
        let negative = chars.get(i) == Some(&'-');
        if matches!(chars.get(i), Some('+' | '-')) {
            i += 1;
        }
        let exp_end = digits_from(i);
        if exp_end == i {
            return Err(parse_error(
                i + 1,
                "expected the exponent's digits after `e`",
            ));
        }
        let exp_text: String = chars[i..exp_end].iter().collect();
        let exp = exp_text
            .parse::<u32>()
            .ok()
            .filter(|e| *e <= MAX_SCIENTIFIC_EXPONENT)
            .ok_or_else(|| {
                parse_error(
                    i + 1,
                    format!("the exponent after `e` must be at most {MAX_SCIENTIFIC_EXPONENT}"),
                )
            })?;
        let exp = i32::try_from(exp).unwrap_or(i32::MAX);
        scale += if negative { -exp } else { exp };
        end = exp_end;
    }
    // Leading zeros say nothing and would count against the digit limit.
    let significant = text.trim_start_matches('0');
    let mantissa = if significant.is_empty() {
        0
    } else {
        significant
            .parse::<i128>()
            .map_err(|_| ToolError::TooLarge)?
    };
    let ten_to = |power: i32| {
        10i128
            .checked_pow(power.unsigned_abs())
            .ok_or(ToolError::TooLarge)
    };
    let value = if scale >= 0 {
        Rational::integer(mul(mantissa, ten_to(scale)?)?)
    } else if mantissa == 0 {
        Rational::integer(0)
    } else {
        Rational::new(mantissa, ten_to(scale)?)?
    };
    Ok((value, end))
}

struct Parser<'a> {
    tokens: &'a [Token],
    next: usize,
    depth: usize,
    /// The position just past the input, for "ended early" errors.
    end: usize,
}

/// Binding power of `^`; unary minus binds just below it.
const POWER: u8 = 4;
const UNARY: u8 = 3;

impl Parser<'_> {
    fn peek(&self) -> Option<Token> {
        self.tokens.get(self.next).copied()
    }

    /// An expression whose binary operators all bind at least `min` tightly.
    fn expression(&mut self, min: u8) -> Result<Rational, ToolError> {
        let mut left = self.unary()?;
        while let Some(token) = self.peek() {
            let (precedence, right_associative) = match token.kind {
                TokenKind::Plus | TokenKind::Minus => (1, false),
                TokenKind::Times | TokenKind::Divide => (2, false),
                TokenKind::Power => (POWER, true),
                _ => break,
            };
            if precedence < min {
                break;
            }
            self.next += 1;
            let next_min = if right_associative {
                precedence
            } else {
                precedence + 1
            };
            let right = self.nested(|p| p.expression(next_min))?;
            left = match token.kind {
                TokenKind::Plus => left.add(right)?,
                TokenKind::Minus => left.sub(right)?,
                TokenKind::Times => left.mul(right)?,
                TokenKind::Divide => left.div(right)?,
                _ => left.pow(right)?,
            };
        }
        Ok(left)
    }

    /// A signed operand: `-x` negates everything binding tighter than unary minus, so
    /// `-2^2` is `-(2^2)`.
    fn unary(&mut self) -> Result<Rational, ToolError> {
        match self.peek().map(|t| t.kind) {
            Some(TokenKind::Minus) => {
                self.next += 1;
                self.nested(|p| p.expression(UNARY))?.neg()
            }
            Some(TokenKind::Plus) => {
                self.next += 1;
                self.nested(|p| p.expression(UNARY))
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Rational, ToolError> {
        let Some(token) = self.peek() else {
            return Err(parse_error(
                self.end,
                "the expression ends where a number or `(` was expected",
            ));
        };
        self.next += 1;
        match token.kind {
            TokenKind::Number(value) => Ok(value),
            TokenKind::Open => {
                let value = self.nested(|p| p.expression(0))?;
                match self.peek() {
                    Some(Token {
                        kind: TokenKind::Close,
                        ..
                    }) => {
                        self.next += 1;
                        Ok(value)
                    }
                    Some(other) => Err(parse_error(
                        other.position,
                        format!("expected `)` or an operator, found {}", other.kind),
                    )),
                    None => Err(parse_error(
                        self.end,
                        format!("the `(` at character {} is never closed", token.position),
                    )),
                }
            }
            other => Err(parse_error(
                token.position,
                format!("expected a number or `(`, found {other}"),
            )),
        }
    }

    fn nested(
        &mut self,
        parse: impl FnOnce(&mut Self) -> Result<Rational, ToolError>,
    ) -> Result<Rational, ToolError> {
        if self.depth >= MAX_NESTING {
            let position = self.peek().map_or(self.end, |t| t.position);
            return Err(ToolError::TooDeep {
                position,
                limit: MAX_NESTING,
            });
        }
        self.depth += 1;
        let value = parse(self);
        self.depth -= 1;
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calc(expression: &str) -> String {
        calculate(expression).unwrap_or_else(|err| panic!("{expression}: {err}"))
    }

    fn fails(expression: &str) -> ToolError {
        match calculate(expression) {
            Ok(value) => panic!("{expression} gave {value}, expected an error"),
            Err(err) => err,
        }
    }

    #[test]
    fn precedence_and_associativity() {
        for (expression, expected) in [
            ("1 + 2 * 3", "7"),
            ("(1 + 2) * 3", "9"),
            ("10 - 4 - 3", "3"),
            ("100 / 10 / 5", "2"),
            ("2 * 3 ^ 2", "18"),
            ("2 ^ 3 ^ 2", "512"),
            ("(2 ^ 3) ^ 2", "64"),
            ("2^10", "1024"),
            ("2**10", "1024"),
            ("17 * (3+4)", "119"),
            ("((((7))))", "7"),
            ("1 - 2 + 3", "2"),
            ("8 / 2 * 4", "16"),
        ] {
            assert_eq!(calc(expression), expected, "{expression}");
        }
    }

    #[test]
    fn unary_minus_binds_below_power() {
        for (expression, expected) in [
            ("-2^2", "-4"),
            ("(-2)^2", "4"),
            ("2^-1", "0.5"),
            ("2^-2*4", "1"),
            ("--3", "3"),
            ("-(-3)", "3"),
            ("+5 - -5", "10"),
            ("3 * -2", "-6"),
            ("−4 × 2 ÷ 8", "-1"),
            ("-0", "0"),
        ] {
            assert_eq!(calc(expression), expected, "{expression}");
        }
    }

    #[test]
    fn decimals_are_exact() {
        for (expression, expected) in [
            ("0.1 + 0.2", "0.3"),
            ("3.25 * 4", "13"),
            ("1 / 8", "0.125"),
            ("-1 / 8", "-0.125"),
            (".5 + .25", "0.75"),
            ("1e3", "1000"),
            ("2.5E-2", "0.025"),
            ("0.000", "0"),
            ("007", "7"),
            ("1 / 2^20", "0.00000095367431640625"),
            ("0.1 * 3 - 0.3", "0"),
        ] {
            assert_eq!(calc(expression), expected, "{expression}");
        }
    }

    #[test]
    fn fractions_without_a_finite_decimal_show_an_approximation() {
        assert_eq!(calc("1/3"), "1/3 ≈ 0.333333333333");
        assert_eq!(calc("2/3"), "2/3 ≈ 0.666666666667");
        assert_eq!(calc("-1/3"), "-1/3 ≈ -0.333333333333");
        assert_eq!(calc("10/3"), "10/3 ≈ 3.33333333333");
        assert_eq!(calc("1/7 * 7"), "1");
        assert_eq!(calc("1/3 + 1/6"), "0.5");
        assert_eq!(
            calc("1/300000000000000"),
            "1/300000000000000 ≈ 0.00000000000000333333333333"
        );
        // Rounding carries into the integer part.
        assert_eq!(
            calc("2 - 1/3000000000000"),
            "5999999999999/3000000000000 ≈ 2"
        );
        let value = evaluate("6/4").expect("evaluates");
        assert_eq!((value.numerator(), value.denominator()), (3, 2));
    }

    #[test]
    fn division_by_zero_is_an_error() {
        for expression in ["1/0", "1 / (2 - 2)", "0^-1", "5 / 0.0"] {
            assert!(
                matches!(fails(expression), ToolError::DivisionByZero),
                "{expression}"
            );
        }
        assert_eq!(ToolError::DivisionByZero.to_string(), "division by zero");
    }

    #[test]
    fn garbage_is_refused_with_its_position() {
        for (expression, position, words) in [
            ("", 1, "empty"),
            ("   ", 1, "empty"),
            ("2 +", 4, "ends where"),
            ("2 + * 3", 5, "expected a number"),
            ("(1 + 2", 7, "never closed"),
            ("1 + 2)", 6, "without a matching"),
            ("2 (3)", 3, "expected an operator"),
            ("2 3", 3, "expected an operator"),
            ("sqrt(2)", 1, "`sqrt`"),
            ("1,000 + 1", 2, "thousands separators"),
            ("3 $ 4", 3, "`$`"),
            ("1.", 3, "digit after"),
            ("1e", 3, "exponent"),
            ("__import__('os')", 1, "`__import__`"),
            ("()", 2, "expected a number"),
        ] {
            match fails(expression) {
                ToolError::Parse {
                    position: at,
                    problem,
                } => {
                    assert_eq!(at, position, "{expression}: {problem}");
                    assert!(problem.contains(words), "{expression}: {problem}");
                }
                other => panic!("{expression}: {other}"),
            }
        }
        let message = fails("2 + * 3").to_string();
        assert!(message.contains("character 5"), "{message}");
    }

    #[test]
    fn exponents_must_be_small_integers() {
        assert!(matches!(
            fails("2 ^ 0.5"),
            ToolError::ExponentNotInteger { .. }
        ));
        assert!(matches!(
            fails("2 ^ 1000000000000"),
            ToolError::ExponentTooLarge { .. }
        ));
        assert!(matches!(fails("2 ^ 10000"), ToolError::TooLarge));
        assert!(matches!(fails("2 ^ 127"), ToolError::TooLarge));
        assert_eq!(calc("2 ^ 126"), (1i128 << 126).to_string());
        // 0, 1 and -1 stay small whatever the power.
        assert_eq!(calc("1 ^ 1000000000000"), "1");
        assert_eq!(calc("(-1) ^ 1000000000001"), "-1");
        assert_eq!(calc("0 ^ 1000000000000"), "0");
        assert_eq!(calc("0 ^ 0"), "1");
        assert_eq!(calc("(2/3) ^ -2"), "2.25");
        assert_eq!(calc("4 ^ (1/2 + 1/2)"), "4");
    }

    #[test]
    fn values_beyond_i128_are_refused_not_rounded() {
        for expression in [
            "170141183460469231731687303715884105728",
            "99999999999999999999 * 99999999999999999999",
            "1e38 * 10",
            "1 / 3^81",
            "1e39",
        ] {
            let err = fails(expression);
            assert!(
                matches!(err, ToolError::TooLarge | ToolError::Parse { .. }),
                "{expression}: {err}"
            );
        }
        assert_eq!(
            calc("170141183460469231731687303715884105727"),
            i128::MAX.to_string()
        );
        // Cancelling before multiplying keeps results that fit.
        assert_eq!(calc("(1e30 / 7) * (7 / 1e30)"), "1");
        // Approximating a fraction with a denominator near i128::MAX does not overflow.
        let big = "170141183460469231731687303715884105727";
        assert!(calc(&format!("1 / {big}")).starts_with("1/"));
        assert!(calc(&format!("({big} - 1) / {big}")).ends_with("≈ 1"));
    }

    #[test]
    fn input_and_nesting_are_bounded() {
        let long = "1+".repeat(MAX_EXPRESSION_CHARS / 2) + "1";
        assert!(matches!(
            fails(&long),
            ToolError::ExpressionTooLong { limit: 1_000, .. }
        ));
        let deep = format!("{}1{}", "(".repeat(300), ")".repeat(300));
        assert!(matches!(fails(&deep), ToolError::TooDeep { .. }));
        let minuses = format!("{}1", "-".repeat(500));
        assert!(matches!(fails(&minuses), ToolError::TooDeep { .. }));
        let powers = format!("2{}", "^2".repeat(400));
        assert!(matches!(fails(&powers), ToolError::TooDeep { .. }));
        // Long flat sums are fine: only nesting counts.
        let sum = "1+".repeat(400) + "1";
        assert_eq!(calc(&sum), "401");
    }
}
