//! Upstream answers split into one [`Answer`] per forwarded call, matched to the calls by
//! ethgate's ids, and written under the client's ids ([`Answer::write`]).

use std::cell::Cell;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::consistency::Verdict;
use super::Framing;
use super::{Attempted, Verdicts};
use crate::jsonrpc::{self, Call, RpcError, UpstreamResponse};
use crate::upstream::AnswerText;

/// How every response ethgate writes opens, before the client's id.
const OPENING: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":";

/// One response spliced under the client's id, complete: what [`splice`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The complete response object.
    pub body: Vec<u8>,
    /// Whether it carries a JSON-RPC error.
    pub is_error: bool,
}

/// The member of a response object that carries the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Result,
    Error,
}

/// One response without its id: the front end writes it under the call's id straight into
/// the reply body ([`Answer::write`]). A relayed value is copied when short, else a slice of
/// the upstream's answer (a reference count, no copy), so a batch of n calls costs no n
/// allocations here.
#[derive(Debug, Clone)]
pub struct Answer {
    member: Member,
    /// The member's JSON value, exactly as the upstream wrote it or as ethgate made it.
    value: Value,
    /// Whether it carries a JSON-RPC error.
    pub is_error: bool,
}

impl PartialEq for Answer {
    fn eq(&self, other: &Answer) -> bool {
        (self.member, self.value.as_bytes(), self.is_error)
            == (other.member, other.value.as_bytes(), other.is_error)
    }
}

impl Eq for Answer {}

/// Values up to this long are copied out of the upstream's answer: a full 64-bit quantity
/// (`"0x` and 16 digits `"`), `true`, `false`, `null` and small numbers.
const INLINE: usize = 22;

/// The bytes of an answer's value.
#[derive(Debug, Clone)]
enum Value {
    /// A short relayed value, copied: cheaper than a reference count taken and released per
    /// call, and the upstream's answer is not kept alive for it.
    Inline { len: u8, bytes: [u8; INLINE] },
    /// A longer relayed value (a slice of the upstream's answer) or one ethgate made.
    Shared(Bytes),
}

impl Value {
    /// `value`, a part of `answer`: copied when short, else a slice of it.
    #[inline(always)]
    fn relayed(answer: &Bytes, value: &[u8]) -> Value {
        let Ok(len) = u8::try_from(value.len()) else {
            return Value::Shared(answer.slice_ref(value));
        };
        if value.len() > INLINE {
            return Value::Shared(answer.slice_ref(value));
        }
        // The whole window of INLINE bytes where the value starts in `answer` is copied when
        // the answer holds it (a fixed-size copy, no `memcpy` call); only `len` are used.
        let (base, at) = (answer.as_ptr() as usize, value.as_ptr() as usize);
        let within = at >= base && at - base + value.len() <= answer.len();
        let window = answer
            .get(at.wrapping_sub(base)..)
            .filter(|_| within)
            .and_then(|rest| rest.first_chunk::<INLINE>());
        let bytes = match window {
            Some(window) => *window,
            None => {
                let mut bytes = [0; INLINE];
                bytes[..value.len()].copy_from_slice(value);
                bytes
            }
        };
        Value::Inline { len, bytes }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Value::Shared(bytes) => bytes,
        }
    }

    /// Appends the value to `out`.
    #[inline(always)]
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            // All INLINE bytes at a fixed size, then cut back to the value, where that
            // needs no more room than `out` has (a body sized exactly must not grow).
            Value::Inline { len, bytes } if out.capacity() - out.len() >= INLINE => {
                let end = out.len() + usize::from(*len);
                out.extend_from_slice(bytes);
                out.truncate(end);
            }
            Value::Inline { .. } => out.extend_from_slice(self.as_bytes()),
            Value::Shared(bytes) => out.extend_from_slice(bytes),
        }
    }
}

impl Answer {
    /// A result ethgate made (`value` is JSON text).
    pub fn result(value: impl Into<Bytes>) -> Answer {
        Answer {
            member: Member::Result,
            value: Value::Shared(value.into()),
            is_error: false,
        }
    }

    /// An error ethgate made.
    pub fn error(error: &RpcError) -> Answer {
        let mut value = Vec::with_capacity(64);
        jsonrpc::encode_error_object(&mut value, error);
        Answer {
            member: Member::Error,
            value: Value::Shared(value.into()),
            is_error: true,
        }
    }

    /// The upstream's `response` (which borrows from `answer`) as relayed: its error when
    /// that is not `null`, else its result, else a `null` result. Inlined into the loop that
    /// fills the answers, so each is built where it is stored.
    #[inline(always)]
    fn relayed(answer: &Bytes, response: &UpstreamResponse<'_>) -> Answer {
        let (member, value) = match (response.error, response.result) {
            (Some(error), _) if error.get() != "null" => (Member::Error, error),
            (_, Some(result)) => (Member::Result, result),
            _ => {
                return Answer {
                    member: Member::Result,
                    value: Value::Shared(Bytes::from_static(b"null")),
                    is_error: false,
                }
            }
        };
        Answer {
            member,
            // `value` borrows from `answer` (parsed in place), so this is a sub-slice of it.
            value: Value::relayed(answer, value.get().as_bytes()),
            is_error: member == Member::Error,
        }
    }

    /// Appends the response object under the client's `id`.
    #[inline]
    pub fn write(&self, out: &mut Vec<u8>, id: &RawValue) {
        out.extend_from_slice(OPENING);
        out.extend_from_slice(id.get().as_bytes());
        // Each name a constant of its own length: stores, not a `memcpy` call.
        match self.member {
            Member::Result => out.extend_from_slice(b",\"result\":"),
            Member::Error => out.extend_from_slice(b",\"error\":"),
        }
        self.value.write(out);
        out.push(b'}');
    }

    fn member_name(&self) -> &'static [u8] {
        match self.member {
            Member::Result => b",\"result\":",
            Member::Error => b",\"error\":",
        }
    }

    /// A result whose value is `text` as given, flagged as `is_error` (tests of choosing).
    #[cfg(test)]
    pub(super) fn verbatim(text: &str, is_error: bool) -> Answer {
        Answer {
            member: Member::Result,
            value: Value::Shared(Bytes::copy_from_slice(text.as_bytes())),
            is_error,
        }
    }

    /// The member's value.
    #[cfg(test)]
    pub(super) fn value(&self) -> &[u8] {
        self.value.as_bytes()
    }

    /// The complete response object under the client's `id`.
    pub fn body(&self, id: &RawValue) -> Vec<u8> {
        // Exactly its size: the buffer becomes the answer's bytes without a copy or a grow.
        let value = self.value.as_bytes();
        let len = OPENING.len() + id.get().len() + self.member_name().len() + value.len() + 1;
        let mut out = Vec::with_capacity(len);
        self.write(&mut out, id);
        debug_assert_eq!(out.len(), len);
        out
    }
}

/// Answers, one per forwarded call (`None` for notifications); a single call's is held inline,
/// saving an allocation per call.
pub type Rendered = smallvec::SmallVec<[Option<Answer>; 1]>;

/// Splices an upstream answer into one response per call under the client's ids, judging
/// nothing: the splicing alone, public for the fuzz target and its corpus.
pub fn splice(
    body: &[u8],
    calls: &[&Call<'_>],
    framing: Framing,
) -> Result<Vec<Option<Reply>>, String> {
    let body = Bytes::copy_from_slice(body);
    let attempted = render(&body, 0, calls, framing, |_, _| Verdict::Fine)?;
    Ok(calls
        .iter()
        .zip(attempted.rendered)
        .map(|(call, answer)| {
            let (id, answer) = (call.id?, answer?);
            Some(Reply {
                body: answer.body(id),
                is_error: answer.is_error,
            })
        })
        .collect())
}

/// Splits an upstream answer to calls numbered from `base` into one [`Answer`] per call, with
/// `judge`'s verdict on each. Its UTF-8 is checked here once for the whole answer (rather than
/// by serde_json string by string), unless its transport already did.
pub(super) fn render(
    answer: &impl AnswerText,
    base: u64,
    calls: &[&Call<'_>],
    framing: Framing,
    mut judge: impl FnMut(usize, &UpstreamResponse<'_>) -> Verdict,
) -> Result<Attempted, String> {
    let text = answer
        .text()
        .map_err(|e| format!("not a JSON-RPC answer: {e}"))?;
    let body = answer.bytes();
    let answers = match_answers(text, base, calls.len(), framing)?;
    let mut verdicts = Verdicts::with_capacity(calls.len());
    let mut rendered = Rendered::with_capacity(calls.len());
    for (i, (call, answer)) in calls.iter().zip(&answers).enumerate() {
        if answer.result.is_none() && answer.error.is_none() {
            return Err(format!("answer {i} has neither result nor error"));
        }
        verdicts.push(judge(i, answer));
        rendered.push(call.id.map(|_| Answer::relayed(body, answer)));
    }
    Ok(Attempted { rendered, verdicts })
}

/// The upstream's answers in call order: a batch answer may come in any order, and each
/// response is put in the slot of its id (ethgate's `base..base + n`) as it is parsed, in one
/// pass.
fn match_answers(
    body: &str,
    base: u64,
    n: usize,
    framing: Framing,
) -> Result<Responses<'_>, String> {
    // The hand-written scanner reads well-formed answers; anything else, serde reads and
    // reports on.
    if framing == Framing::Single {
        if let Some(answer) = jsonrpc::single_answer(body) {
            return Ok(smallvec::smallvec![answer]);
        }
        let answer =
            serde_json::from_str(body).map_err(|e| format!("not a JSON-RPC answer: {e}"))?;
        return Ok(smallvec::smallvec![answer]);
    }
    if let Some(answers) = jsonrpc::batch_answer(body, base, n) {
        return Ok(Responses::from_vec(answers));
    }
    serde_batch_answer(body, base, n).map(Responses::from_vec)
}

/// The upstream's answers in call order; a single call's is held inline (no allocation).
type Responses<'a> = smallvec::SmallVec<[UpstreamResponse<'a>; 1]>;

/// [`match_answers`] for a batch answer by serde: the reference the scanner is tested
/// against, and the reader of every answer the scanner leaves (with the reason it is wrong).
fn serde_batch_answer(
    body: &str,
    base: u64,
    n: usize,
) -> Result<Vec<UpstreamResponse<'_>>, String> {
    let mut slots: Vec<Option<UpstreamResponse>> = (0..n).map(|_| None).collect();
    let problem = Cell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let placed = BatchAnswer {
        base,
        slots: &mut slots,
        problem: &problem,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end());
    if let Err(e) = placed {
        return Err(match problem.get() {
            Some(problem) => problem.to_string(),
            None => format!("not a JSON-RPC batch answer: {e}"),
        });
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(i, slot)| slot.ok_or_else(|| format!("batch answer lacks id {i}")))
        .collect()
}

/// Visits a batch answer, putting each response in its slot; a response whose id was not sent
/// or comes twice stops it with the reason in `problem`.
struct BatchAnswer<'s, 'a> {
    base: u64,
    slots: &'s mut [Option<UpstreamResponse<'a>>],
    problem: &'s Cell<Option<&'static str>>,
}

impl<'de> DeserializeSeed<'de> for BatchAnswer<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BatchAnswer<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC batch answer")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(answer) = seq.next_element::<UpstreamResponse<'de>>()? {
            let Some(slot) = answer
                .numeric_id()
                .and_then(|id| id.checked_sub(self.base))
                .and_then(|id| usize::try_from(id).ok())
                .and_then(|id| self.slots.get_mut(id))
            else {
                self.problem
                    .set(Some("batch answer carries an id that was not sent"));
                return Err(de::Error::custom("unexpected id"));
            };
            if slot.replace(answer).is_some() {
                self.problem.set(Some("batch answer repeats an id"));
                return Err(de::Error::custom("repeated id"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relayed values are written byte for byte whether short enough to be copied or long
    /// enough to be shared, and an answer equals another with the same bytes however held.
    #[test]
    fn short_and_long_values_are_relayed_exactly() {
        let long = format!("\"0x{}\"", "ab".repeat(32));
        let body = Bytes::from(format!(
            r#"[{{"id":0,"result":"0x1234"}},{{"id":1,"result":{long}}},{{"id":2,"result":"{}"}}]"#,
            "1".repeat(INLINE - 2)
        ));
        let id = RawValue::from_string("\"client\"".into()).unwrap();
        let calls: Vec<Call<'_>> = (0..3)
            .map(|_| Call::new(Some(&id), "eth_x".into(), None))
            .collect();
        let calls: Vec<&Call<'_>> = calls.iter().collect();
        let attempted = render(&body, 0, &calls, Framing::Batch, |_, _| Verdict::Fine).unwrap();
        let bodies: Vec<String> = attempted
            .rendered
            .iter()
            .map(|a| String::from_utf8(a.as_ref().unwrap().body(&id)).unwrap())
            .collect();
        let exact = |value: &str| format!(r#"{{"jsonrpc":"2.0","id":"client","result":{value}}}"#);
        let edge = format!("\"{}\"", "1".repeat(INLINE - 2));
        assert_eq!(bodies, [exact("\"0x1234\""), exact(&long), exact(&edge)]);
        let answers: Vec<&Answer> = attempted.rendered.iter().flatten().collect();
        assert!(matches!(answers[0].value, Value::Inline { .. }));
        assert!(matches!(answers[1].value, Value::Shared(_)));
        assert!(matches!(answers[2].value, Value::Inline { .. }));
        assert_eq!(*answers[0], Answer::result("\"0x1234\""));
        // A single answer's body is allocated at its exact size, never grown.
        let single = answers[0].body(&id);
        assert_eq!(single.capacity(), single.len());
        assert_ne!(*answers[0], Answer::result("\"0x1235\""));
    }
}
