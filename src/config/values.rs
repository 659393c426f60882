//! Single values with a syntax of their own: CIDRs, ether amounts and log filters.

use ipnet::IpNet;

/// Parses a CIDR strictly (no host bits set); a bare address means that one host.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let address = text.split('/').next().unwrap_or(text);
    // "010.0.0.1" is octal to some tools and decimal to others: refuse the ambiguity.
    if !address.contains(':')
        && address
            .split('.')
            .any(|o| o.len() > 1 && o.starts_with('0'))
    {
        return Err(format!("{text:?} has an octet with a leading zero"));
    }
    if !text.contains('/') {
        let ip: std::net::IpAddr = text
            .parse()
            .map_err(|_| format!("invalid address or CIDR {text:?}"))?;
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = text.parse().map_err(|_| format!("invalid CIDR {text:?}"))?;
    if net.trunc() != net {
        return Err(format!(
            "CIDR {text:?} has host bits set (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Parses a decimal ether amount such as `"0.5"` into wei.
pub fn parse_ether(text: &str) -> Result<u128, String> {
    let bad = || format!("{text:?} is not a decimal ether amount like \"0.5\"");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits_ok(whole) || !digits_ok(fraction) {
        return Err(bad());
    }
    if fraction.len() > 18 {
        return Err(format!("{text:?} has more than 18 decimals"));
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let scaled_fraction: u128 = format!("{fraction:0<18}").parse().map_err(|_| bad())?;
    whole
        .checked_mul(10u128.pow(18))
        .and_then(|w| w.checked_add(scaled_fraction))
        .ok_or_else(bad)
}

/// Levels a log filter directive may name.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a log filter: comma-separated directives, each a level (`info`) or `target=level`
/// (`ethgate=debug`). tracing would read a bare word that is not a level (`warning`) as a
/// target to log everything of, so a typo silently turned all logging off: refused here.
pub fn check_log_filter(text: &str) -> Result<(), String> {
    for directive in text.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level.trim(),
            Some(_) => return Err(format!("{directive:?} names no target before '='")),
            None => directive,
        };
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(format!(
                "{level:?} is not a level (trace, debug, info, warn, error, off) in {text:?}; \
                 write a level, or target=level"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(text)
        .map(drop)
        .map_err(|e| format!("invalid filter {text:?}: {e}"))
}
