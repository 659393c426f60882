//! The clients: closed-loop keep-alive HTTP/1.1 connections and what they send.

use super::*;

/// What the clients send and how an answer is recognised.
pub(super) struct Workload {
    pub(super) body: Bytes,
    /// `None` for a single call, else the batch length.
    pub(super) batch: Option<usize>,
}

impl Workload {
    pub(super) fn single() -> Workload {
        Workload {
            body: Bytes::from_static(SINGLE_REQUEST.as_bytes()),
            batch: None,
        }
    }

    pub(super) fn batch(size: usize) -> Workload {
        let mut body = String::from("[");
        for i in 0..size {
            if i > 0 {
                body.push(',');
            }
            let _ = write!(
                body,
                r#"{{"jsonrpc":"2.0","id":{i},"method":"eth_blockNumber","params":[]}}"#
            );
        }
        body.push(']');
        Workload {
            body: Bytes::from(body),
            batch: Some(size),
        }
    }

    /// Full check: a JSON-RPC result for every call, under the ids sent.
    pub(super) fn validate(&self, body: &[u8]) -> Result<(), String> {
        #[derive(Deserialize)]
        struct Answer {
            id: serde_json::Value,
            result: Option<serde_json::Value>,
            error: Option<serde_json::Value>,
        }
        let check = |a: &Answer, id: u64| -> Result<(), String> {
            if let Some(error) = &a.error {
                return Err(format!("error answer: {error}"));
            }
            if a.result.is_none() {
                return Err("answer without result".into());
            }
            if a.id != serde_json::json!(id) {
                return Err(format!("id {} instead of {id}", a.id));
            }
            Ok(())
        };
        match self.batch {
            None => {
                let answer: Answer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
                check(&answer, 1)
            }
            Some(size) => {
                let answers: Vec<Answer> =
                    serde_json::from_slice(body).map_err(|e| e.to_string())?;
                if answers.len() != size {
                    return Err(format!("{} answers to a batch of {size}", answers.len()));
                }
                let mut ids: Vec<u64> = answers.iter().filter_map(|a| a.id.as_u64()).collect();
                ids.sort_unstable();
                if ids != (0..size as u64).collect::<Vec<_>>() {
                    return Err("batch answer ids differ from the ids sent".into());
                }
                answers
                    .iter()
                    .try_for_each(|a| check(a, a.id.as_u64().unwrap_or(0)))
            }
        }
    }

    /// Cheap check for every answer after the first: right shape and no error object.
    pub(super) fn looks_right(&self, body: &[u8]) -> bool {
        let opening = if self.batch.is_some() { b'[' } else { b'{' };
        body.first() == Some(&opening) && !body.windows(8).any(|w| w == b"\"error\":")
    }
}

pub(super) async fn client_loop(
    addr: SocketAddr,
    workload: Arc<Workload>,
    measure_from: std::time::Instant,
    end: std::time::Instant,
) -> anyhow::Result<Record> {
    let (measure_from, end) = (Instant::from_std(measure_from), Instant::from_std(end));
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let host = HeaderValue::from_str(&addr.to_string())?;
    let mut record = Record::new();
    let mut validated = false;
    loop {
        let started = Instant::now();
        if started >= end {
            break;
        }
        let mut request = Request::post("/").body(Full::new(workload.body.clone()))?;
        request.headers_mut().insert(HOST, host.clone());
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let elapsed = started.elapsed();
        let verdict = if status != StatusCode::OK {
            Err(format!("HTTP {status}"))
        } else if !validated {
            validated = true;
            workload.validate(&body)
        } else if workload.looks_right(&body) {
            Ok(())
        } else {
            Err(format!(
                "unexpected answer: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))
        };
        if started >= measure_from {
            record.latencies_ns.push(elapsed.as_nanos() as u64);
            if let Err(error) = verdict {
                record.error(error);
            }
        }
    }
    Ok(record)
}

pub(super) async fn wait_until_serving(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let workload = Arc::new(Workload::single());
    let mut last = String::new();
    while Instant::now() < deadline {
        let now = Instant::now();
        let (from, to) = (now.into_std(), (now + Duration::from_millis(1)).into_std());
        match client_loop(addr, workload.clone(), from, to).await {
            Ok(record) if !record.latencies_ns.is_empty() && record.errors == 0 => return Ok(()),
            Ok(record) => last = record.first_error.unwrap_or_default(),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no good answer within 15 s (last: {last})")
}
