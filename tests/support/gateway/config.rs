//! Builder of the ethgate TOML config the in-process tests start from: loopback listeners on
//! free ports and fast health settings.

use super::super::mock::MockUpstream;

/// Builder of an ethgate TOML config with fast health settings for tests.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    top: Vec<(String, String)>,
    server: Vec<(String, String)>,
    health: Vec<(String, String)>,
    access: Vec<(String, String)>,
    upstreams: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        let kv = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        GatewayConfig {
            top: Vec::new(),
            server: kv(&[
                ("listen", "\"127.0.0.1:0\""),
                ("request_timeout", "\"2s\""),
                ("shutdown_grace", "\"5s\""),
                // Tests that stop the gateway need no balancer to notice; the drain tests set it.
                ("drain_delay", "\"0s\""),
            ]),
            health: kv(&[
                ("interval", "\"300ms\""),
                ("timeout", "\"250ms\""),
                ("failure_threshold", "3"),
                ("recovery_threshold", "1"),
                ("max_lag_blocks", "5"),
            ]),
            access: Vec::new(),
            upstreams: Vec::new(),
        }
    }
}

fn set(list: &mut Vec<(String, String)>, key: &str, value: &str) {
    list.retain(|(k, _)| k != key);
    list.push((key.to_string(), value.to_string()));
}

impl GatewayConfig {
    /// Loopback listeners on free ports, request_timeout 2s, health every 300ms (timeout 250ms, 3 failures
    /// out, 1 success back, lag 5). The probe timeout is generous so a loaded CI machine does not make a
    /// healthy mock look unreachable; state changes still show within about a second.
    pub fn new() -> GatewayConfig {
        GatewayConfig::default()
    }

    /// Sets the top-level `chain_id`.
    pub fn chain_id(mut self, id: u64) -> Self {
        set(&mut self.top, "chain_id", &id.to_string());
        self
    }

    /// Sets `[server] key = value` (`value` is TOML: quote strings).
    pub fn server(mut self, key: &str, value: &str) -> Self {
        set(&mut self.server, key, value);
        self
    }

    /// Sets `[health] key = value` (`value` is TOML).
    pub fn health(mut self, key: &str, value: &str) -> Self {
        set(&mut self.health, key, value);
        self
    }

    /// Sets `[access] key = value` (`value` is TOML).
    pub fn access(mut self, key: &str, value: &str) -> Self {
        set(&mut self.access, key, value);
        self
    }

    /// Adds an `[[upstream]]` with the mock's HTTP and WS URLs.
    pub fn upstream(mut self, name: &str, mock: &MockUpstream, priority: u32) -> Self {
        self.upstreams.push(format!(
            "[[upstream]]\nname = \"{name}\"\nhttp = \"{}\"\nws = \"{}\"\npriority = {priority}\n",
            mock.http_url(),
            mock.ws_url()
        ));
        self
    }

    /// Adds an `[[upstream]]` with only an HTTP URL.
    pub fn upstream_http(mut self, name: &str, http: &str, priority: u32) -> Self {
        self.upstreams.push(format!(
            "[[upstream]]\nname = \"{name}\"\nhttp = \"{http}\"\npriority = {priority}\n"
        ));
        self
    }

    /// The TOML document.
    pub fn to_toml(&self) -> String {
        let lines = |list: &[(String, String)]| -> String {
            list.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
        };
        let mut out = lines(&self.top);
        out += &format!("\n[server]\n{}", lines(&self.server));
        out += &format!("\n[health]\n{}", lines(&self.health));
        if !self.access.is_empty() {
            out += &format!("\n[access]\n{}", lines(&self.access));
        }
        for u in &self.upstreams {
            out += &format!("\n{u}");
        }
        out += "\n[admin]\nlisten = \"127.0.0.1:0\"\n";
        out
    }
}
