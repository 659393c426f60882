//! Monotonic reads: the per-request plan that orders candidates by what they have, pins
//! `safe`/`finalized` to the served number on upstreams that have not reached it, judges each
//! answer against the served marks, and patches what no upstream could serve.
//!
//! The rule, per tag (`latest`, `safe`, `finalized`): an answer that names a block (the number
//! of `eth_blockNumber`, the block of a tagged `eth_getBlockByNumber`) is never below the
//! highest one served before. Upstreams at or above the mark are tried first; an answer below
//! it sends the router to the next candidate; when every candidate is below, the served
//! value itself is answered (the number, or the exact block object served under the tag).

use std::sync::Arc;

use serde_json::value::RawValue;

use super::marks::Marks;
use super::tags::{self, Tag, Use};
use super::Answer;
use crate::jsonrpc::{self, Call, RpcError, UpstreamResponse};
use crate::upstream::{Upstream, Upstreams};

/// How one answer of an attempt relates to the served marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to check, or nothing wrong.
    Fine,
    /// Names block `number` under `tag`, at or above the mark; `block` holds the block object
    /// when it is worth keeping as the served copy.
    Observed {
        /// The tag answered.
        tag: Tag,
        /// The block number it named.
        number: u64,
        /// The block object to keep (tagged `eth_getBlockByNumber` only).
        block: Option<Arc<str>>,
    },
    /// This upstream lacks the data ("header not found", `null` for a known block).
    Lacking,
    /// Names a block below the mark of `tag`: going back.
    Behind(Tag),
}

impl Verdict {
    /// Whether another candidate should be asked.
    pub fn wants_retry(&self) -> bool {
        matches!(self, Verdict::Lacking | Verdict::Behind(_))
    }
}

/// Candidates in the order to try them; a few held inline, so no allocation per call.
pub type Ordered<'u> = smallvec::SmallVec<[&'u Arc<Upstream>; 4]>;

/// What the router knows about one request before trying upstreams.
pub struct Plan {
    /// Held inline for a single call: no allocation for the common case.
    uses: smallvec::SmallVec<[Use; 1]>,
    /// The marks in force for this request, by [`Tag`] index.
    marks: [u64; 3],
    /// The served head or the best in-rotation head, whichever is higher.
    known_head: u64,
    /// Whether any call reads a tag.
    reads_tags: bool,
    /// Head an upstream needs to serve every call at or above the marks.
    wanted_head: u64,
}

impl Plan {
    /// Classifies `calls` and reads the marks in force (releasing one no upstream is within
    /// `bound` of; see [`Marks::enforced`]).
    pub fn new(calls: &[&Call<'_>], marks: &Marks, upstreams: &Upstreams, bound: u64) -> Plan {
        let uses: smallvec::SmallVec<[Use; 1]> = calls
            .iter()
            .map(|c| tags::classify(&c.method, c.params))
            .collect();
        let best = |value: fn(&Upstream) -> Option<u64>| {
            upstreams
                .all()
                .iter()
                .filter(|u| u.in_rotation())
                .filter_map(|u| value(u))
                .max()
        };
        let best_head = best(|u| Some(u.head()));
        let marks = marks.enforced(
            [best_head, best(Upstream::safe), best(Upstream::finalized)],
            bound,
        );
        // A block at or below this exists: a `null` for it means the node lacks it.
        let known_head = marks[Tag::Latest as usize].max(best_head.unwrap_or(0));
        let mut wanted_head = 0;
        let mut reads_tags = false;
        for u in &uses {
            match *u {
                Use::BlockNumber
                | Use::BlockByTag {
                    tag: Tag::Latest, ..
                }
                | Use::Tagged(Tag::Latest) => {
                    reads_tags = true;
                    wanted_head = wanted_head.max(marks[Tag::Latest as usize]);
                }
                Use::BlockByTag { .. } | Use::Tagged(_) => reads_tags = true,
                Use::ByNumber(n) if n <= known_head => wanted_head = wanted_head.max(n),
                _ => {}
            }
        }
        Plan {
            uses,
            marks,
            known_head,
            reads_tags,
            wanted_head,
        }
    }

    /// `candidates` without upstreams unfit for tag reads (when the request reads tags),
    /// those at or above the wanted head first, each group in the given order.
    pub fn order<'u>(
        &self,
        candidates: impl IntoIterator<Item = &'u Arc<Upstream>>,
        upstreams: &Upstreams,
    ) -> Ordered<'u> {
        let bound = upstreams.health_config().max_lag_blocks;
        // Each head read once: a probe may move it while the list is sorted.
        let mut usable: smallvec::SmallVec<[_; 4]> = candidates
            .into_iter()
            .filter(|u| !self.reads_tags || fit_for_tags(u, self.marks, bound))
            .map(|u| (u.head() < self.wanted_head, u))
            .collect();
        // Stable: those that have the wanted head first, each group in candidate order.
        usable.sort_by_key(|&(behind, _)| behind);
        usable.into_iter().map(|(_, u)| u).collect()
    }

    /// Params to send `upstream` in place of the client's: `safe`/`finalized` pinned to the
    /// served number where the upstream has not reported reaching it.
    pub fn pins_for(&self, calls: &[&Call<'_>], upstream: &Upstream) -> Pins {
        let mut pins = Pins::default();
        for (i, (call, u)) in calls.iter().zip(&self.uses).enumerate() {
            if let Some(pin) = self.pin(call, *u, upstream) {
                pins.set(i, calls.len(), pin);
            }
        }
        pins
    }

    fn pin(&self, call: &Call<'_>, u: Use, upstream: &Upstream) -> Option<Box<RawValue>> {
        let tag = match u {
            Use::BlockByTag { tag, .. } | Use::Tagged(tag) => tag,
            _ => return None,
        };
        let reported = match tag {
            Tag::Latest => return None,
            Tag::Safe => upstream.safe(),
            Tag::Finalized => upstream.finalized(),
        };
        let mark = self.marks[tag as usize];
        if mark == 0 || reported.is_some_and(|r| r >= mark) {
            return None;
        }
        tags::pin(&call.method, call.params, tag, mark)
    }

    /// Judges answer `i`; `pinned` says whether its tag was replaced by the served number.
    #[inline]
    pub fn judge(
        &self,
        i: usize,
        pinned: bool,
        answer: &UpstreamResponse<'_>,
        marks: &Marks,
    ) -> Verdict {
        // The answers judged most, inline: a plain read, or a block number without an error.
        match (self.uses.get(i), answer.error, answer.result) {
            (Some(Use::Plain), None, Some(result)) if result.get() != "null" => {
                return Verdict::Fine
            }
            (Some(Use::BlockNumber), None, Some(result)) => {
                if let Some(n) = tags::quantity(result) {
                    return self.observed(Tag::Latest, n, None);
                }
            }
            _ => {}
        }
        self.judge_any(i, pinned, answer, marks)
    }

    /// [`Plan::judge`] for every answer.
    fn judge_any(
        &self,
        i: usize,
        pinned: bool,
        answer: &UpstreamResponse<'_>,
        marks: &Marks,
    ) -> Verdict {
        let null_result = || answer.result.is_none_or(|r| r.get() == "null");
        // Most answers carry no error: its summary (a parse) is read only when one is there.
        let lacking = match answer.error.map(|_| answer.error_summary()) {
            None | Some(None) => null_result(),
            Some(Some((_, message))) if crate::policy::is_missing_data(&message) => true,
            Some(Some(_)) => return Verdict::Fine,
        };
        match (self.uses[i], lacking) {
            // The tag was pinned to the served block: an upstream without it is behind that
            // mark, and if all are, the client gets the served block (or -32002), never null.
            (Use::BlockByTag { tag, .. }, true) if pinned => return Verdict::Behind(tag),
            (_, true) if answer.error.is_some() => return Verdict::Lacking,
            _ => {}
        }
        let result = answer.result.filter(|r| r.get() != "null");
        match (self.uses[i], result) {
            (Use::ByNumber(n), None) if n <= self.known_head => Verdict::Lacking,
            (Use::ByHash, None) => Verdict::Lacking,
            (Use::BlockByTag { .. }, _) if pinned => Verdict::Fine,
            (Use::BlockNumber, Some(result)) => match tags::quantity(result) {
                Some(n) => self.observed(Tag::Latest, n, None),
                None => Verdict::Fine,
            },
            (Use::BlockByTag { tag, full }, Some(result)) => {
                self.judge_block(tag, full, result, marks)
            }
            _ => Verdict::Fine,
        }
    }

    /// [`Plan::judge`] for the block object answered for `tag`.
    fn judge_block(&self, tag: Tag, full: bool, result: &RawValue, marks: &Marks) -> Verdict {
        match tags::block_number(result) {
            Some(n) => {
                let keep = (n >= self.marks[tag as usize] && marks.wants_block(tag, full, n))
                    .then(|| Arc::from(result.get()));
                self.observed(tag, n, keep)
            }
            None => Verdict::Fine,
        }
    }

    /// Raises the marks for what the final answer served, keeping block objects.
    pub fn record(&self, verdicts: &[Verdict], marks: &Marks) {
        // Observing is a max: a run of numbers is observed as its highest, one atomic update
        // per tag rather than per call, flushed before a block is kept so that keeping sees
        // the marks as a call-by-call record would.
        let mut highest: [Option<u64>; 3] = [None; 3];
        let flush = |highest: &mut [Option<u64>; 3]| {
            for (tag, number) in Tag::ALL.into_iter().zip(highest.iter_mut()) {
                if let Some(number) = number.take() {
                    marks.observe(tag, number);
                }
            }
        };
        for (u, verdict) in self.uses.iter().zip(verdicts) {
            if let Verdict::Observed { tag, number, block } = verdict {
                let slot = &mut highest[*tag as usize];
                *slot = Some(slot.map_or(*number, |h| h.max(*number)));
                if let (Some(block), Use::BlockByTag { full, .. }) = (block, u) {
                    flush(&mut highest);
                    marks.keep_block(*tag, *full, *number, block.clone());
                }
            }
        }
        flush(&mut highest);
    }

    #[inline]
    fn observed(&self, tag: Tag, number: u64, block: Option<Arc<str>>) -> Verdict {
        if number < self.marks[tag as usize] {
            Verdict::Behind(tag)
        } else {
            Verdict::Observed { tag, number, block }
        }
    }

    /// The answer for a call whose every answer was behind: the served value (the number, or
    /// the block object served under the tag, which is exact), or an honest error when that
    /// block object is not kept. Nothing is made up.
    pub fn served_instead(&self, i: usize, tag: Tag, marks: &Marks) -> Answer {
        let mark = self.marks[tag as usize];
        match self.uses[i] {
            Use::BlockNumber => return Answer::result(format!("\"0x{mark:x}\"")),
            Use::BlockByTag { full, .. } => {
                if let Some(block) = marks.block(tag, full, mark) {
                    return Answer::result(block.as_bytes().to_vec());
                }
            }
            _ => {}
        }
        Answer::error(&behind_error(tag, mark))
    }
}

/// Whether `upstream` may serve tag reads: its `finalized` never went back and does not lag
/// the served one by more than `bound` blocks.
fn fit_for_tags(upstream: &Upstream, marks: [u64; 3], bound: u64) -> bool {
    let served = marks[Tag::Finalized as usize];
    !upstream.finalized_went_back()
        && upstream
            .finalized()
            .is_none_or(|f| f.saturating_add(bound) >= served)
}

fn behind_error(tag: Tag, mark: u64) -> RpcError {
    jsonrpc::NO_HEALTHY_UPSTREAM.with_data(format!(
        "no upstream in rotation has reached the {} block 0x{mark:x} already served",
        tag.as_str()
    ))
}

/// Replacement params by call index; nothing is allocated while no call is pinned, which is
/// almost always.
#[derive(Default)]
pub struct Pins(Vec<Option<Box<RawValue>>>);

impl Pins {
    /// The params replacing call `i`'s, if any.
    pub fn get(&self, i: usize) -> Option<&RawValue> {
        self.0.get(i).and_then(|p| p.as_deref())
    }

    /// Pins call `i` of `calls` to `params`.
    pub(super) fn set(&mut self, i: usize, calls: usize, params: Box<RawValue>) {
        if self.0.is_empty() {
            self.0.resize_with(calls, || None);
        }
        self.0[i] = Some(params);
    }
}

#[cfg(test)]
#[path = "consistency_tests.rs"]
mod tests;
