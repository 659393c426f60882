//! The skipping half of the [`Cursor`]: a value that is only relayed is checked and stepped
//! over as serde_json's `ignore_value` reads it (JSON's grammar, escapes checked for form
//! only), without building anything. Kept apart from the readers of the common case in
//! `scan.rs` because it answers to a different authority: it must accept exactly what serde
//! accepts, which `scan_tests.rs` pins value by value.

use super::{string_stop, Cursor, MAX_DEPTH};

impl Cursor<'_> {
    /// Skips one value of any type, as serde_json's `ignore_value` reads it.
    #[inline]
    pub(in crate::jsonrpc) fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'[' | b'{' => self.skip_container(),
            _ => self.scalar(),
        }
    }

    /// [`Cursor::skip_value`] for an array or object.
    fn skip_container(&mut self) -> Option<()> {
        // The open containers, innermost in bit 0: 1 for an object, 0 for an array.
        let mut open: u128 = 0;
        let mut depth = 0;
        loop {
            self.ws();
            match self.peek()? {
                container @ (b'[' | b'{') => {
                    self.pos += 1;
                    self.ws();
                    let object = container == b'{';
                    if !self.eat(if object { b'}' } else { b']' }) {
                        if depth == MAX_DEPTH {
                            return None;
                        }
                        open = open << 1 | u128::from(object);
                        depth += 1;
                        if object {
                            self.member_name()?;
                        }
                        continue;
                    }
                }
                _ => self.scalar()?,
            }
            // A value ended: close what it ends, or move on to the next element or member.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.ws();
                let object = open & 1 == 1;
                match self.bump()? {
                    b',' => {
                        if object {
                            self.ws();
                            self.member_name()?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                open >>= 1;
                depth -= 1;
            }
        }
    }

    /// A member name inside a skipped object and its colon.
    fn member_name(&mut self) -> Option<()> {
        self.skip_str()?;
        self.ws();
        self.eat(b':').then_some(())
    }

    /// A string, number or literal.
    #[inline(always)]
    fn scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_str(),
            b'-' | b'0'..=b'9' => self.skip_number(),
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.bytes().get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// A string with any escapes, checked for form only (serde's `ignore_str`: a `\u` needs
    /// four hex digits, a lone surrogate is fine); a control byte ends it in error.
    fn skip_str(&mut self) -> Option<()> {
        if !self.eat(b'"') {
            return None;
        }
        loop {
            self.pos += string_stop(self.bytes().get(self.pos..)?)?;
            match self.bump()? {
                b'"' => return Some(()),
                b'\\' => self.skip_escape()?,
                _ => return None,
            }
        }
    }

    fn skip_escape(&mut self) -> Option<()> {
        match self.bump()? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(()),
            b'u' => {
                let end = self.pos + 4;
                let hex = self.bytes().get(self.pos..end)?;
                self.pos = end;
                hex.iter().all(u8::is_ascii_hexdigit).then_some(())
            }
            _ => None,
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, as serde's `ignore_integer` reads it
    /// (what follows is the caller's to check).
    #[inline]
    fn skip_number(&mut self) -> Option<()> {
        self.eat(b'-');
        match self.bump()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.') {
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.some_digits()?;
        }
        // `01`: serde refuses a digit after a leading zero; so does the caller's next check,
        // but saying so here keeps the rule in one place.
        (!matches!(self.peek(), Some(b'0'..=b'9'))).then_some(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.pos;
        self.digits();
        (self.pos > start).then_some(())
    }
}
