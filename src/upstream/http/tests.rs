//! The upstream HTTP/1.1 client against scripted loopback servers: framing, reuse, limits and
//! how each failure is classified.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const LIMIT: usize = 1024;

fn pool() -> HttpPool {
    let headers = Credentials(vec![("x-api-key".into(), "secret".into())]);
    HttpPool::new(
        Duration::from_secs(2),
        LIMIT,
        crate::config::upstream_tls::plain_only(),
        &headers,
    )
}

/// Reads one request (head and Content-Length body) from `socket`; `None` at EOF.
async fn read_request(socket: &mut TcpStream) -> Option<String> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while data.len() < end + 4 + len {
                let n = socket.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                data.extend_from_slice(&chunk[..n]);
            }
            return Some(String::from_utf8_lossy(&data[..end + 4 + len]).to_string());
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&chunk[..n]);
    }
}

/// A server that answers every request on every connection with `answer`, then closes the
/// connection when `close_after_each`; counts connections and keeps the requests seen.
struct Scripted {
    uri: http::Uri,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn serve(answer: &'static [u8], close_after_each: bool) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}/rpc?x=1", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (counted, seen) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Some(request) = read_request(&mut socket).await {
                    seen.lock().unwrap().push(request);
                    if socket.write_all(answer).await.is_err() || close_after_each {
                        return;
                    }
                }
            });
        }
    });
    Scripted {
        uri,
        connections,
        requests,
    }
}

async fn post(pool: &HttpPool, uri: &http::Uri) -> Result<Bytes, SendError> {
    pool.post(uri, b"{\"id\":0}").await
}

#[tokio::test]
async fn a_content_length_answer_is_read_and_the_connection_reused() {
    let server = serve(
        b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"result\":1}",
        false,
    )
    .await;
    let pool = pool();
    for _ in 0..3 {
        assert_eq!(
            &post(&pool, &server.uri).await.unwrap()[..],
            b"{\"result\":1}"
        );
    }
    assert_eq!(server.connections.load(Ordering::SeqCst), 1, "kept alive");
    let requests = server.requests.lock().unwrap().clone();
    let first = &requests[0];
    assert!(first.starts_with("POST /rpc?x=1 HTTP/1.1\r\n"), "{first}");
    assert!(first.contains(&format!("host: {}\r\n", server.uri.authority().unwrap())));
    assert!(first.contains("content-type: application/json\r\n"));
    assert!(first.contains("content-length: 8\r\n"));
    assert!(first.contains("x-api-key: secret\r\n"));
    assert!(first.ends_with("\r\n\r\n{\"id\":0}"));
}

#[tokio::test]
async fn a_body_larger_than_the_socket_takes_at_once_arrives_whole_after_its_head() {
    let server = serve(
        b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"result\":1}",
        false,
    )
    .await;
    // Megabytes: the vectored write returns part-way, inside the body, several times.
    let body: Vec<u8> = (0..6_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let answer = pool().post(&server.uri, &body).await.unwrap();
    assert_eq!(&answer[..], b"{\"result\":1}");
    let requests = server.requests.lock().unwrap().clone();
    let (head, sent) = requests[0].split_once("\r\n\r\n").unwrap();
    assert!(head.contains("content-length: 6000000"), "{head}");
    assert!(sent.as_bytes() == body, "the body arrived altered");
}

#[tokio::test]
async fn a_connection_with_bytes_beyond_the_answer_is_not_reused() {
    // One byte more than Content-Length: whatever it is, the next answer would start wrong.
    let server = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}}", false).await;
    let pool = pool();
    assert_eq!(&post(&pool, &server.uri).await.unwrap()[..], b"{}");
    assert_eq!(&post(&pool, &server.uri).await.unwrap()[..], b"{}");
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_chunked_answer_with_extensions_and_trailers_is_joined() {
    let server = serve(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          4;ext=1\r\n{\"re\r\n7\r\nsult\":2\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\n",
        false,
    )
    .await;
    let pool = pool();
    assert_eq!(
        &post(&pool, &server.uri).await.unwrap()[..],
        b"{\"result\":2}"
    );
    assert_eq!(
        &post(&pool, &server.uri).await.unwrap()[..],
        b"{\"result\":2}"
    );
    assert_eq!(server.connections.load(Ordering::SeqCst), 1, "kept alive");
}

#[tokio::test]
async fn an_answer_delimited_by_close_is_read_to_the_end_and_not_reused() {
    let server = serve(b"HTTP/1.0 200 OK\r\n\r\n{\"result\":3}", true).await;
    let pool = pool();
    assert_eq!(
        &post(&pool, &server.uri).await.unwrap()[..],
        b"{\"result\":3}"
    );
    assert_eq!(
        &post(&pool, &server.uri).await.unwrap()[..],
        b"{\"result\":3}"
    );
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let server = serve(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        false,
    )
    .await;
    assert_eq!(&post(&pool(), &server.uri).await.unwrap()[..], b"{}");
}

#[tokio::test]
async fn a_server_error_or_429_is_a_status_failure() {
    for (answer, status) in [
        (
            &b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy"[..],
            503,
        ),
        (
            &b"HTTP/1.1 429 Slow down\r\nContent-Length: 0\r\n\r\n"[..],
            429,
        ),
    ] {
        let server = serve(answer, false).await;
        assert_eq!(
            post(&pool(), &server.uri).await,
            Err(SendError::Status(status))
        );
    }
}

#[tokio::test]
async fn answers_over_the_limit_are_too_large_however_they_are_framed() {
    let long = Box::leak("x".repeat(LIMIT + 1).into_boxed_str());
    let chunked = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{long}\r\n0\r\n\r\n",
            long.len()
        )
        .into_boxed_str(),
    );
    let until_close = Box::leak(format!("HTTP/1.1 200 OK\r\n\r\n{long}").into_boxed_str());
    for answer in [
        "HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n",
        chunked,
        until_close,
    ] {
        let server = serve(answer.as_bytes(), true).await;
        assert_eq!(
            post(&pool(), &server.uri).await,
            Err(SendError::TooLarge(LIMIT)),
            "{}",
            &answer[..40]
        );
    }
}

#[tokio::test]
async fn a_kept_alive_connection_the_node_closed_is_replaced_without_failing_the_call() {
    // Answers once per connection, then closes it: every reuse finds it closed.
    let server = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", true).await;
    let pool = pool();
    assert_eq!(&post(&pool, &server.uri).await.unwrap()[..], b"{}");
    // Wait until the node's close has reached the idle connection, as it would between calls.
    let deadline = Instant::now() + Duration::from_secs(5);
    while lock(&pool.idle).iter().all(|c| c.stream.is_reusable()) {
        assert!(Instant::now() < deadline, "the close never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(&post(&pool, &server.uri).await.unwrap()[..], b"{}");
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_cut_mid_answer_or_a_malformed_head_is_no_answer() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"res"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"re",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"<html>not http</html>\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"",
    ] {
        let server = serve(answer, true).await;
        let outcome = post(&pool(), &server.uri).await;
        assert!(
            matches!(outcome, Err(SendError::NoAnswer(_))),
            "{:?}: {outcome:?}",
            String::from_utf8_lossy(answer)
        );
    }
}

#[tokio::test]
async fn a_refused_connect_is_not_sent() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}/", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    drop(listener);
    let outcome = post(&pool(), &uri).await;
    assert!(
        matches!(&outcome, Err(SendError::NotSent(d)) if d.starts_with("connect: ")),
        "{outcome:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn connections_idle_past_the_timeout_are_closed_when_another_returns() {
    let server = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", false).await;
    let pool = pool();
    // Three calls at once leave three idle connections.
    let (a, b, c) = tokio::join!(
        post(&pool, &server.uri),
        post(&pool, &server.uri),
        post(&pool, &server.uri)
    );
    assert!(a.is_ok() && b.is_ok() && c.is_ok());
    assert_eq!(lock(&pool.idle).len(), 3);
    // A steady load reuses only the most recent one; the other two age past the timeout.
    let half = IDLE_TIMEOUT / 2 + Duration::from_secs(1);
    tokio::time::advance(half).await;
    assert!(post(&pool, &server.uri).await.is_ok());
    tokio::time::advance(half).await;
    assert!(post(&pool, &server.uri).await.is_ok());
    assert_eq!(
        lock(&pool.idle).len(),
        1,
        "the two stale ones closed on return"
    );
    assert_eq!(server.connections.load(Ordering::SeqCst), 3);
}

#[test]
fn endpoints_resolve_bracketed_ipv6_hosts_and_default_ports() {
    let tls = crate::config::upstream_tls::plain_only();
    let endpoint = |url: &str| Endpoint::of(&url.parse().unwrap(), &tls);
    let v6 = endpoint("http://[::1]:8545/rpc").unwrap();
    assert_eq!((&*v6.host, v6.port, v6.tls.is_some()), ("::1", 8545, false));
    let hosted = endpoint("https://eth.example/v3/key").unwrap();
    assert_eq!(
        (&*hosted.host, hosted.port, hosted.tls.is_some()),
        ("eth.example", 443, true)
    );
    assert_eq!(endpoint("http://node").unwrap().port, 80);
    assert!(endpoint("ws://node:8546").is_none(), "not an HTTP endpoint");
}

#[tokio::test]
async fn heads_and_chunk_lines_that_never_end_are_cut_at_their_limits() {
    // The server keeps the connection open: only ethgate's own limits can end these reads.
    let endless_head =
        Box::leak(format!("HTTP/1.1 200 OK\r\nx-filler: {}", "f".repeat(70_000)).into_boxed_str());
    let many_headers =
        Box::leak(format!("HTTP/1.1 200 OK\r\n{}", "x-h: v\r\n".repeat(65)).into_boxed_str());
    let endless_chunk_line = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;{}",
            "e".repeat(2000)
        )
        .into_boxed_str(),
    );
    for (answer, expected) in [
        (&*endless_head, "answer head too large"),
        (&*many_headers, "invalid HTTP answer: too many headers"),
        (&*endless_chunk_line, "invalid chunk: line too long"),
    ] {
        let server = serve(answer.as_bytes(), false).await;
        let outcome = tokio::time::timeout(Duration::from_secs(5), post(&pool(), &server.uri))
            .await
            .expect("a limit ends the read, not the server");
        assert_eq!(outcome, Err(SendError::NoAnswer(expected.into())));
    }
}
