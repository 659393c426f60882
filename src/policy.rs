//! Method policy: the deny list, and what the router may do with each method.

/// Methods that change state on the node that receives them: retried only when the
/// request certainly never reached an upstream.
const WRITE_METHODS: &[&str] = &[
    "eth_sendRawTransaction",
    "eth_sendRawTransactionConditional",
    "eth_sendTransaction",
    "eth_submitWork",
    "eth_submitHashrate",
    "eth_sendBundle",
    "eth_sendPrivateTransaction",
];

/// Error messages (lower-cased fragments) meaning "this node lacks the data", not "the call
/// is wrong": another node at or above the same head may answer.
const MISSING_DATA_FRAGMENTS: &[&str] = &[
    "header not found",
    "missing trie node",
    "unknown block",
    "block not found",
    "required historical state unavailable",
    "historical state not available",
    "state not available",
    "pruned",
];

/// Error messages (lower-cased fragments) with which a node says it already holds a sent
/// transaction (geth, erigon, besu, nethermind, reth): the transaction is in its pool.
const ALREADY_KNOWN_FRAGMENTS: &[&str] = &[
    "already known",
    "alreadyknown",
    "known transaction",
    "already imported",
    "already in the pool",
];

/// Method names refused before they reach any upstream.
#[derive(Debug, Clone)]
pub struct DenyList {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl DenyList {
    /// Builds the list from exact names and `prefix_*` patterns (validated by config).
    pub fn new(patterns: &[String]) -> Self {
        let (prefixes, exact): (Vec<_>, Vec<_>) = patterns.iter().partition(|p| p.ends_with('*'));
        DenyList {
            exact: exact.into_iter().cloned().collect(),
            prefixes: prefixes
                .into_iter()
                .map(|p| p.trim_end_matches('*').to_string())
                .collect(),
        }
    }

    /// Whether `method` is denied; matching is case-sensitive, as geth's dispatch is.
    pub fn denies(&self, method: &str) -> bool {
        // The first byte settles most prefixes without a call to compare the rest.
        let first = method.as_bytes().first();
        self.exact.iter().any(|m| m == method)
            || self.prefixes.iter().any(|p| match p.as_bytes().first() {
                None => true,
                Some(byte) => first == Some(byte) && method.starts_with(p.as_str()),
            })
    }
}

/// Whether a method changes node state (see [`WRITE_METHODS`]).
pub fn is_write(method: &str) -> bool {
    WRITE_METHODS.contains(&method)
}

/// Whether an upstream's error message means it lacks the requested data.
pub fn is_missing_data(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    MISSING_DATA_FRAGMENTS.iter().any(|f| message.contains(f))
}

/// Whether an upstream's answer to a send means it already has the transaction.
pub fn is_already_known(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ALREADY_KNOWN_FRAGMENTS.iter().any(|f| message.contains(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_list() -> DenyList {
        let patterns: Vec<String> = crate::config::DEFAULT_DENY_METHODS
            .iter()
            .map(|s| s.to_string())
            .collect();
        DenyList::new(&patterns)
    }

    #[test]
    fn default_list_denies_dangerous_namespaces_only() {
        let list = default_list();
        for denied in [
            "admin_peers",
            "personal_unlockAccount",
            "debug_traceTransaction",
            "miner_start",
            "txpool_content",
            "engine_newPayloadV3",
        ] {
            assert!(list.denies(denied), "{denied}");
        }
        for allowed in [
            "eth_call",
            "net_version",
            "web3_clientVersion",
            "eth_getLogs",
        ] {
            assert!(!list.denies(allowed), "{allowed}");
        }
    }

    #[test]
    fn matching_is_case_sensitive_and_exact_names_are_exact() {
        let list = DenyList::new(&["eth_sign".to_string(), "admin_*".to_string()]);
        assert!(list.denies("eth_sign"));
        assert!(!list.denies("eth_signTransaction"));
        assert!(!list.denies("Admin_peers"));
    }

    #[test]
    fn a_lone_star_denies_every_method_and_prefixes_sharing_a_first_byte_stay_apart() {
        let everything = DenyList::new(&["*".to_string()]);
        assert!(everything.denies("eth_call"));
        assert!(everything.denies(""));
        let list = DenyList::new(&["eth_sign*".to_string(), "engine_*".to_string()]);
        assert!(list.denies("eth_signTypedData"));
        assert!(list.denies("engine_getPayloadV3"));
        assert!(!list.denies("eth_call"));
        assert!(!list.denies("e"));
        assert!(!list.denies(""));
    }

    #[test]
    fn writes_and_missing_data_are_recognised() {
        assert!(is_write("eth_sendRawTransaction"));
        assert!(!is_write("eth_call"));
        assert!(is_missing_data("header not found"));
        assert!(is_missing_data("Missing trie node 0xabc (path )"));
        assert!(!is_missing_data("execution reverted"));
    }

    #[test]
    fn already_known_answers_of_common_clients_are_recognised() {
        assert!(is_already_known("already known"));
        assert!(is_already_known("known transaction: 0xabc"));
        assert!(is_already_known("AlreadyKnown"));
        assert!(is_already_known("Transaction already imported"));
        assert!(!is_already_known("nonce too low"));
        assert!(!is_already_known("replacement transaction underpriced"));
    }
}
