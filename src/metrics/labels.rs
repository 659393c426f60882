//! Label values of the fixed series, as enums with an `ALL` table: a series is chosen by a
//! variant, never by a string, so no label can be miscounted under another or dropped.

/// Declares a label enum: variants with their exposition text, `ALL` in rendering order,
/// `as_str`, and `index` (the counter slot, equal to the position in `ALL`).
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in the order its series are rendered.
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            /// The label value in the exposition.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// The counter slot of this value: its position in [`Self::ALL`].
            pub const fn index(self) -> usize {
                self as usize
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use label_enum;

label_enum! {
    /// Client transports (`transport` label).
    pub enum Transport {
        /// HTTP POST.
        Http => "http",
        /// A client WebSocket session.
        Ws => "ws",
    }
}

label_enum! {
    /// Outcome of one client call (`result` label of `ethgate_requests_total`).
    pub enum CallResult {
        /// Answered with a result.
        Ok => "ok",
        /// Answered with a JSON-RPC error.
        RpcError => "rpc_error",
        /// Refused by the method deny list.
        Denied => "denied",
        /// Not a valid JSON-RPC call.
        Invalid => "invalid",
        /// No upstream could answer.
        Unavailable => "unavailable",
    }
}

label_enum! {
    /// What failed over (`kind` label of `ethgate_failovers_total`).
    pub enum FailoverKind {
        /// The selected upstream changed.
        Request => "request",
        /// The feed's source changed.
        Subscription => "subscription",
        /// A call waiting on an upstream that left rotation was moved to another one.
        InFlight => "in_flight",
    }
}

label_enum! {
    /// Hedge events (`result` label of `ethgate_hedges_total`).
    pub enum HedgeResult {
        /// A read also sent to a second upstream after `server.hedge_after`.
        Sent => "sent",
        /// Of those, one the second upstream answered first.
        Won => "won",
    }
}

label_enum! {
    /// Why a connection was closed at accept (`reason` label).
    pub enum DenyReason {
        /// The client address is not in the allowlist.
        NotAllowed => "not_allowed",
        /// A required or malformed PROXY protocol header.
        ProxyHeader => "proxy_header",
    }
}

/// Method names that get their own label, sorted by length, then bytes: looked up by a binary
/// search that mostly compares lengths, not text. Anything else is `other`.
pub(super) const KNOWN_METHODS: &[&str] = &[
    "eth_call",
    "web3_sha3",
    "eth_chainId",
    "eth_getCode",
    "eth_getLogs",
    "eth_syncing",
    "net_version",
    "eth_gasPrice",
    "eth_getProof",
    "eth_newFilter",
    "eth_subscribe",
    "net_listening",
    "net_peerCount",
    "eth_feeHistory",
    "eth_getBalance",
    "eth_blockNumber",
    "eth_estimateGas",
    "eth_unsubscribe",
    "eth_getStorageAt",
    "eth_getFilterLogs",
    "eth_getBlockByHash",
    "eth_newBlockFilter",
    "web3_clientVersion",
    "eth_sendTransaction",
    "eth_uninstallFilter",
    "eth_getBlockByNumber",
    "eth_getBlockReceipts",
    "eth_getFilterChanges",
    "eth_sendRawTransaction",
    "eth_getTransactionCount",
    "eth_getTransactionByHash",
    "eth_maxPriorityFeePerGas",
    "eth_getTransactionReceipt",
    "eth_getUncleCountByBlockHash",
    "eth_getUncleByBlockHashAndIndex",
    "eth_newPendingTransactionFilter",
    "eth_getBlockTransactionCountByHash",
    "eth_getBlockTransactionCountByNumber",
    "eth_getTransactionByBlockHashAndIndex",
    "eth_getTransactionByBlockNumberAndIndex",
];

/// Method labels: the known ones, then `other`.
pub(super) const METHOD_LABELS: usize = KNOWN_METHODS.len() + 1;

/// The method label slot of `method`: client-chosen text, so anything not known is `other`
/// (the last slot) by design.
pub(super) fn method_index(method: &str) -> usize {
    // Cheaper per call than hashing the name, or than comparing text at every step.
    KNOWN_METHODS
        .binary_search_by(|known| by_length_then_bytes(known, method))
        .unwrap_or(KNOWN_METHODS.len())
}

fn by_length_then_bytes(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// The method label of slot `index` (see [`method_index`]).
pub(super) fn method_label(index: usize) -> &'static str {
    KNOWN_METHODS.get(index).copied().unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_are_sorted_and_unknown_ones_are_other() {
        assert!(
            KNOWN_METHODS
                .windows(2)
                .all(|w| by_length_then_bytes(w[0], w[1]).is_lt()),
            "KNOWN_METHODS must stay sorted by length, then bytes"
        );
        for (slot, method) in KNOWN_METHODS.iter().enumerate() {
            assert_eq!(method_index(method), slot, "{method}");
        }
        assert_eq!(KNOWN_METHODS[method_index("eth_call")], "eth_call");
        assert_eq!(method_index("eth_madeUp"), KNOWN_METHODS.len());
        assert_eq!(method_label(method_index("eth_madeUp")), "other");
    }

    #[test]
    fn every_label_sits_at_its_own_slot() {
        fn check<T: Copy + std::fmt::Debug>(
            all: &[T],
            index: fn(T) -> usize,
            text: fn(T) -> &'static str,
        ) {
            for (i, value) in all.iter().enumerate() {
                assert_eq!(index(*value), i, "{value:?} is not at its slot");
            }
            let mut texts: Vec<_> = all.iter().map(|v| text(*v)).collect();
            texts.sort_unstable();
            texts.dedup();
            assert_eq!(texts.len(), all.len(), "two values share a label");
        }
        check(&Transport::ALL, Transport::index, Transport::as_str);
        check(&CallResult::ALL, CallResult::index, CallResult::as_str);
        check(
            &FailoverKind::ALL,
            FailoverKind::index,
            FailoverKind::as_str,
        );
        check(&HedgeResult::ALL, HedgeResult::index, HedgeResult::as_str);
        check(&DenyReason::ALL, DenyReason::index, DenyReason::as_str);
    }

    #[test]
    fn labels_keep_their_exposition_names() {
        let names = |all: &[&str]| all.join(",");
        assert_eq!(names(&Transport::ALL.map(Transport::as_str)), "http,ws");
        assert_eq!(
            names(&CallResult::ALL.map(CallResult::as_str)),
            "ok,rpc_error,denied,invalid,unavailable"
        );
        assert_eq!(
            names(&FailoverKind::ALL.map(FailoverKind::as_str)),
            "request,subscription,in_flight"
        );
        assert_eq!(
            names(&HedgeResult::ALL.map(HedgeResult::as_str)),
            "sent,won"
        );
        assert_eq!(
            names(&DenyReason::ALL.map(DenyReason::as_str)),
            "not_allowed,proxy_header"
        );
    }
}
