//! Test inputs one or two edits away from a valid body (a byte replaced, inserted or removed,
//! from the characters that matter to JSON), from a fixed seed so a failure is reproducible.

/// Bytes an edit puts in: JSON's structure, escapes, digits, literals' letters, whitespace.
const ALPHABET: &[u8] = b"{}[],:\"\\ u0123456789.eE+-abcdefnrtlsx\t\n\x01";

/// `count` edited copies of `seed`, drawn with xorshift64 from `state` (deterministic and
/// dependency-free).
pub(crate) fn edited(
    seed: &[u8],
    mut state: u64,
    count: usize,
) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    (0..count).map(move |_| {
        let mut body = seed.to_vec();
        for _ in 0..1 + next(2) {
            let at = next(body.len());
            let byte = ALPHABET[next(ALPHABET.len())];
            match next(3) {
                0 => body[at] = byte,
                1 => body.insert(at, byte),
                _ => {
                    body.remove(at);
                }
            }
        }
        body
    })
}
