//! The highest `latest`, `safe` and `finalized` block ethgate has served to any client, and a
//! copy of the block object it served under each tag, so no later answer goes below them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::tags::Tag;

/// A block object served under a tag.
#[derive(Debug, Clone)]
struct ServedBlock {
    number: u64,
    json: Arc<str>,
}

/// Served marks (0 = nothing served yet) and the last block served under each tag.
#[derive(Debug, Default)]
pub struct Marks {
    served: [AtomicU64; 3],
    /// Indexed by `tag * 2 + full`: the answer differs with the full-transactions flag.
    blocks: Mutex<[Option<ServedBlock>; 6]>,
}

impl Marks {
    /// The highest block served under `tag` (0 before any).
    pub fn get(&self, tag: Tag) -> u64 {
        self.served[tag as usize].load(Ordering::Acquire)
    }

    /// Every mark, in [`Tag::ALL`] order.
    pub fn snapshot(&self) -> [u64; 3] {
        Tag::ALL.map(|tag| self.get(tag))
    }

    /// Notes that block `number` was served under `tag`; marks only rise.
    pub fn observe(&self, tag: Tag, number: u64) {
        self.served[tag as usize].fetch_max(number, Ordering::AcqRel);
    }

    /// Whether a block object numbered `number` under `tag` is newer than the kept copy (so
    /// the caller copies the answer only when it will be kept).
    pub fn wants_block(&self, tag: Tag, full: bool, number: u64) -> bool {
        self.lock()[slot(tag, full)]
            .as_ref()
            .is_none_or(|kept| number > kept.number)
    }

    /// Keeps `json` as the block served under `tag` when it is newer than the kept copy.
    pub fn keep_block(&self, tag: Tag, full: bool, number: u64, json: Arc<str>) {
        let mut blocks = self.lock();
        let kept = &mut blocks[slot(tag, full)];
        if kept.as_ref().is_none_or(|k| number > k.number) {
            *kept = Some(ServedBlock { number, json });
        }
    }

    /// The kept block served under `tag` if it is block `number`.
    pub fn block(&self, tag: Tag, full: bool, number: u64) -> Option<Arc<str>> {
        self.lock()[slot(tag, full)]
            .as_ref()
            .filter(|kept| kept.number == number)
            .map(|kept| kept.json.clone())
    }

    /// The marks in force for one request. `best` is the highest value of each tag among the
    /// in-rotation upstreams (`None` when none reported it). A mark more than `bound` blocks
    /// above every in-rotation upstream is released down to the best of them: holding it would
    /// freeze the tag until those upstreams climb that far (a node that served a far-ahead
    /// fork and died), which is worse than one step back. The release is logged.
    pub fn enforced(&self, best: [Option<u64>; 3], bound: u64) -> [u64; 3] {
        Tag::ALL.map(|tag| {
            let cell = &self.served[tag as usize];
            let mark = cell.load(Ordering::Acquire);
            match best[tag as usize] {
                Some(best) if best.saturating_add(bound) < mark => {
                    if cell
                        .compare_exchange(mark, best, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        tracing::warn!(
                            tag = tag.as_str(),
                            served = mark,
                            best,
                            bound,
                            "no upstream in rotation is within the bound of the served block: \
                             the mark is released"
                        );
                    }
                    best
                }
                _ => mark,
            }
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Option<ServedBlock>; 6]> {
        // Each slot is replaced whole: a poisoned lock still holds consistent copies.
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn slot(tag: Tag, full: bool) -> usize {
    tag as usize * 2 + usize::from(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_only_rise() {
        let marks = Marks::default();
        marks.observe(Tag::Finalized, 10);
        marks.observe(Tag::Finalized, 7);
        assert_eq!(marks.get(Tag::Finalized), 10);
        assert_eq!(marks.snapshot(), [0, 0, 10]);
    }

    #[test]
    fn kept_blocks_are_per_tag_and_flag_and_only_newer_replace() {
        let marks = Marks::default();
        marks.keep_block(Tag::Safe, false, 5, "{\"number\":\"0x5\"}".into());
        assert!(marks.wants_block(Tag::Safe, false, 6));
        assert!(!marks.wants_block(Tag::Safe, false, 5));
        assert!(marks.wants_block(Tag::Safe, true, 5));
        marks.keep_block(Tag::Safe, false, 4, "old".into());
        assert_eq!(
            marks.block(Tag::Safe, false, 5).as_deref(),
            Some("{\"number\":\"0x5\"}")
        );
        assert!(marks.block(Tag::Safe, false, 6).is_none());
        assert!(marks.block(Tag::Safe, true, 5).is_none());
        assert!(marks.block(Tag::Latest, false, 5).is_none());
    }

    #[test]
    fn a_mark_within_the_bound_holds_and_beyond_it_is_released() {
        let marks = Marks::default();
        marks.observe(Tag::Latest, 100);
        marks.observe(Tag::Finalized, 50);
        // Three blocks behind with a bound of five: held.
        assert_eq!(marks.enforced([Some(97), None, Some(50)], 5), [100, 0, 50]);
        assert_eq!(marks.get(Tag::Latest), 100);
        // Six behind: released to the best upstream, and stays released.
        assert_eq!(marks.enforced([Some(94), None, Some(50)], 5), [94, 0, 50]);
        assert_eq!(marks.get(Tag::Latest), 94);
        // No upstream reported the tag: nothing to compare with, the mark holds.
        assert_eq!(marks.enforced([None, None, None], 5), [94, 0, 50]);
    }
}
