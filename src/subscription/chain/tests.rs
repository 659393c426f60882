use std::collections::HashMap;

use super::*;

/// Header `n` on branch `b` (branch 0 is the main chain); its parent is on `parent_branch`.
fn header(n: u64, b: u8, parent_branch: u8) -> Header {
    let hash = |n: u64, b: u8| format!("0x{b:02x}{n:062x}");
    let parent = if n == 0 {
        format!("0x{:064x}", 0)
    } else {
        hash(n - 1, parent_branch)
    };
    let json = format!(
        r#"{{"number":"0x{n:x}","hash":"{}","parentHash":"{parent}"}}"#,
        hash(n, b)
    );
    Header {
        number: n,
        hash: hash(n, b),
        parent_hash: parent,
        json: json.into(),
    }
}

struct Chain(HashMap<String, Header>);

impl FetchHeader for &Chain {
    type Error = String;
    async fn by_hash(&mut self, hash: &str) -> Result<Header, String> {
        self.0.get(hash).cloned().ok_or(format!("unknown {hash}"))
    }
}

struct Missing;

impl FetchHeader for Missing {
    type Error = String;
    async fn by_hash(&mut self, hash: &str) -> Result<Header, String> {
        Err(hash.to_string())
    }
}

impl Chain {
    fn new(headers: impl IntoIterator<Item = Header>) -> Self {
        Chain(headers.into_iter().map(|h| (h.hash.clone(), h)).collect())
    }

    async fn plan(&self, view: &ChainView, head: Header, behind: Behind) -> Plan {
        let mut source = self;
        view.plan(head, behind, &mut source).await.unwrap()
    }
}

fn numbers(plan: &Plan) -> Vec<String> {
    plan.changes
        .iter()
        .map(|c| match c {
            Change::Added(h) => format!("+{}", h.number),
            Change::Removed(h) => format!("-{}", h.number),
        })
        .collect()
}

fn deliver(view: &mut ChainView, plan: &Plan) {
    for change in &plan.changes {
        view.apply(change, plan.window());
    }
}

fn main_chain(to: u64) -> Vec<Header> {
    (0..=to).map(|n| header(n, 0, 0)).collect()
}

async fn view_at(chain: &Chain, to: u64) -> ChainView {
    let mut view = ChainView::default();
    for n in 0..=to {
        let plan = chain.plan(&view, header(n, 0, 0), Behind::Taken).await;
        deliver(&mut view, &plan);
    }
    view
}

#[tokio::test]
async fn consecutive_heads_are_added_one_by_one() {
    let chain = Chain::new(main_chain(3));
    let view = view_at(&chain, 2).await;
    assert_eq!(
        numbers(&chain.plan(&view, header(3, 0, 0), Behind::Taken).await),
        ["+3"]
    );
}

#[tokio::test]
async fn skipped_numbers_are_filled_in_order() {
    let chain = Chain::new(main_chain(10));
    let view = view_at(&chain, 5).await;
    let plan = chain.plan(&view, header(9, 0, 0), Behind::Taken).await;
    assert_eq!(numbers(&plan), ["+6", "+7", "+8", "+9"]);
}

#[tokio::test]
async fn duplicate_heads_are_dropped() {
    let chain = Chain::new(main_chain(5));
    let view = view_at(&chain, 5).await;
    let plan = chain.plan(&view, header(4, 0, 0), Behind::Taken).await;
    assert!(plan.dropped && plan.changes.is_empty());
}

#[tokio::test]
async fn after_failover_a_node_behind_delivers_nothing_until_it_passes() {
    let mut all = main_chain(8);
    all.push(header(4, 1, 0));
    let chain = Chain::new(all);
    let view = view_at(&chain, 6).await;
    assert!(
        chain
            .plan(&view, header(4, 1, 0), Behind::Ignored)
            .await
            .dropped,
        "lower fork head ignored"
    );
    assert!(
        chain
            .plan(&view, header(6, 0, 0), Behind::Ignored)
            .await
            .dropped
    );
    assert_eq!(
        numbers(&chain.plan(&view, header(8, 0, 0), Behind::Ignored).await),
        ["+7", "+8"]
    );
}

#[tokio::test]
async fn reorg_of_depth_one_retracts_then_delivers_from_the_fork() {
    let mut all = main_chain(5);
    all.push(header(5, 1, 0));
    all.push(header(6, 1, 1));
    let chain = Chain::new(all);
    let view = view_at(&chain, 5).await;
    let plan = chain.plan(&view, header(6, 1, 1), Behind::Taken).await;
    assert_eq!(numbers(&plan), ["-5", "+5", "+6"]);
}

#[tokio::test]
async fn reorg_of_depth_three_at_the_same_height() {
    let mut all = main_chain(10);
    all.push(header(8, 1, 0));
    all.push(header(9, 1, 1));
    all.push(header(10, 1, 1));
    let chain = Chain::new(all);
    let mut view = view_at(&chain, 10).await;
    let plan = chain.plan(&view, header(10, 1, 1), Behind::Taken).await;
    assert_eq!(numbers(&plan), ["-10", "-9", "-8", "+8", "+9", "+10"]);
    deliver(&mut view, &plan);
    assert_eq!(view.last().unwrap().hash, header(10, 1, 1).hash);
    assert!(!view.contains(&header(9, 0, 0).hash));
}

#[tokio::test]
async fn head_on_an_unrelated_chain_restarts_the_view() {
    let mut all = main_chain(3);
    all.extend((0..=9).map(|n| header(n, 7, 7)));
    let chain = Chain::new(all);
    let view = view_at(&chain, 3).await;
    let plan = chain.plan(&view, header(9, 7, 7), Behind::Taken).await;
    assert!(plan.restarted);
    assert_eq!(numbers(&plan), ["+9"]);
}

#[tokio::test]
async fn fork_below_the_window_retracts_everything_delivered() {
    let mut all = main_chain(12);
    all.extend((5..=12).map(|n| header(n, 4, if n == 5 { 0 } else { 4 })));
    let chain = Chain::new(all);
    let mut view = ChainView::default();
    for n in 9..=10 {
        let plan = chain.plan(&view, header(n, 0, 0), Behind::Taken).await;
        deliver(&mut view, &plan);
    }
    let plan = chain.plan(&view, header(12, 4, 4), Behind::Ignored).await;
    assert!(!plan.restarted);
    assert_eq!(numbers(&plan), ["-10", "-9", "+9", "+10", "+11", "+12"]);
}

#[tokio::test]
async fn missing_ancestor_is_an_error() {
    let chain = Chain::new(main_chain(3));
    let view = view_at(&chain, 3).await;
    let orphan = header(9, 7, 7);
    let result = view.plan(orphan, Behind::Taken, &mut Missing).await;
    assert!(
        result.is_err(),
        "a missing ancestor is an error for the caller to handle"
    );
}

#[test]
fn window_keeps_the_newest_headers() {
    let mut view = ChainView::default();
    for n in 0..(WINDOW as u64 + 10) {
        view.apply(&Change::Added(Arc::new(header(n, 0, 0))), Window::Extend);
    }
    assert_eq!(view.window.len(), WINDOW);
    assert_eq!(view.last().unwrap().number, WINDOW as u64 + 9);
}

#[test]
fn blocks_are_reduced_to_header_fields() {
    let block = RawValue::from_string(
        r#"{"number":"0x1","hash":"0xAB","parentHash":"0xcd","transactions":[],"size":"0x1","timestamp":"0x5"}"#.into(),
    )
    .unwrap();
    let header = Header::parse(&block).unwrap();
    assert_eq!(header.hash, "0xab");
    let fields: serde_json::Value = serde_json::from_str(&header.json).unwrap();
    assert!(fields.get("transactions").is_none() && fields.get("size").is_none());
    assert_eq!(fields["timestamp"], "0x5");
}
