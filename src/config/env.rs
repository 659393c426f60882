//! `${NAME}` in URLs and header values: secrets kept out of the config file.

/// Replaces every `${NAME}` with the environment variable's value. The error names the
/// variable (never a value), for the caller to attach to its key.
pub(super) fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("unterminated ${ (expected ${NAME})".to_string());
        };
        let name = &after[..end];
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(format!("invalid variable name {name:?} in ${{…}}"));
        }
        match std::env::var(name) {
            Ok(value) => out.push_str(&value),
            Err(_) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_variables_is_unchanged() {
        assert_eq!(
            expand_env("https://x/a$b{c}").as_deref(),
            Ok("https://x/a$b{c}")
        );
    }

    #[test]
    fn malformed_references_are_refused() {
        assert_eq!(
            expand_env("a${1X}b"),
            Err("invalid variable name \"1X\" in ${…}".to_string())
        );
        assert_eq!(
            expand_env("a${}"),
            Err("invalid variable name \"\" in ${…}".to_string())
        );
        assert_eq!(
            expand_env("a${B-C}"),
            Err("invalid variable name \"B-C\" in ${…}".to_string())
        );
    }
}
