//! Why a configuration was refused: one [`ConfigError`] per problem, each naming the key it
//! concerns, and [`ConfigErrors`] holding all of them so `ethgate check` can print them at once.

use std::fmt;
use std::path::PathBuf;

/// One problem with a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {reason}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// Not TOML, or a key or type the schema does not have (which toml names in `message`).
    #[error("config{}: {message}", at.map(|at| format!(" (at byte {at})")).unwrap_or_default())]
    Syntax {
        /// Byte offset in the file, when toml knows it.
        at: Option<usize>,
        /// toml's description, on one line.
        message: String,
    },
    /// A value that validation refused.
    #[error("{key}: {message}")]
    Invalid {
        /// The key as written in the file: `server.listen[1]`, `upstream[0].http`.
        key: String,
        /// What is wrong with it (never a secret's value).
        message: String,
    },
}

impl ConfigError {
    /// The key a refused value was written under; `None` for unreadable or unparsable files.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
        }
    }

    /// Renders a toml error on one line, with its position when toml knows it.
    pub(super) fn syntax(e: &toml::de::Error) -> Self {
        ConfigError::Syntax {
            at: e.span().map(|span| span.start),
            message: e.message().trim().to_string(),
        }
    }
}

/// Every problem found in a configuration, in the order of the file's sections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// Each problem rendered on its own line, as `ethgate check` prints them.
    pub fn messages(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_renders_as_before_the_split() {
        let read = ConfigError::Read {
            path: "/etc/ethgate.toml".into(),
            reason: "No such file or directory (os error 2)".into(),
        };
        assert_eq!(
            read.to_string(),
            "/etc/ethgate.toml: No such file or directory (os error 2)"
        );
        let at = ConfigError::Syntax {
            at: Some(12),
            message: "unknown field `x`".into(),
        };
        assert_eq!(at.to_string(), "config (at byte 12): unknown field `x`");
        let nowhere = ConfigError::Syntax {
            at: None,
            message: "bad".into(),
        };
        assert_eq!(nowhere.to_string(), "config: bad");
        let invalid = ConfigError::Invalid {
            key: "server.max_batch_len".into(),
            message: "must be at least 1".into(),
        };
        assert_eq!(
            invalid.to_string(),
            "server.max_batch_len: must be at least 1"
        );
        assert_eq!(invalid.key(), Some("server.max_batch_len"));
        assert_eq!(read.key(), None);
        let all = ConfigErrors(vec![read, invalid]);
        assert_eq!(
            all.to_string(),
            "/etc/ethgate.toml: No such file or directory (os error 2)\n\
             server.max_batch_len: must be at least 1"
        );
    }
}
