//! Why a configuration was refused: one [`ConfigError`] per problem, each naming the key it
//! concerns, and [`ConfigErrors`] holding all of them so `ethgate check` can print them at once.

use std::fmt;
use std::path::PathBuf;

use super::locate::{self, Place};

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
    #[error("{}: {message}", where_(at.as_ref()))]
    Syntax {
        /// Where in the file, when toml knows it, with the key written there.
        at: Option<Place>,
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
            ConfigError::Syntax { at, .. } => at.as_ref().and_then(|at| at.key.as_deref()),
            ConfigError::Read { .. } => None,
        }
    }

    /// Renders a toml error on one line, with its line, column and key when toml knows
    /// where in `text` it is.
    pub(super) fn syntax(e: &toml::de::Error, text: &str) -> Self {
        ConfigError::Syntax {
            at: e.span().map(|span| locate::place(text, span.start)),
            message: e.message().trim().to_string(),
        }
    }
}

/// `server.max_connections (line 3, column 19)`, or `config (line 1, column 8)` where no key
/// shows, or `config`.
fn where_(at: Option<&Place>) -> String {
    match at {
        Some(Place {
            line,
            column,
            key: Some(key),
        }) => format!("{key} (line {line}, column {column})"),
        Some(Place { line, column, .. }) => format!("config (line {line}, column {column})"),
        None => "config".to_string(),
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
    fn a_type_or_schema_error_names_its_key_and_line() {
        let wrong_type = crate::config::Config::from_toml_str(
            "[server]\nlisten = [\"127.0.0.1:1\"]\nmax_connections = \"10\"\n",
        )
        .expect_err("a string for a number");
        assert_eq!(wrong_type.0[0].key(), Some("server.max_connections"));
        assert!(
            wrong_type
                .to_string()
                .starts_with("server.max_connections (line 3, column 19): invalid type"),
            "{wrong_type}"
        );
        let typo = crate::config::Config::from_toml_str(
            "[[upstream]]\nname = \"a\"\nhttp = \"http://127.0.0.1:1\"\n\
             [[upstream]]\nname = \"b\"\nhttp = \"http://127.0.0.1:2\"\npriorty = 1\n",
        )
        .expect_err("unknown key");
        assert_eq!(typo.0[0].key(), Some("upstream[1].priorty"), "{typo}");
    }

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
            at: Some(Place {
                line: 2,
                column: 1,
                key: None,
            }),
            message: "unknown field `x`".into(),
        };
        assert_eq!(
            at.to_string(),
            "config (line 2, column 1): unknown field `x`"
        );
        let keyed = ConfigError::Syntax {
            at: Some(Place {
                line: 3,
                column: 19,
                key: Some("server.max_connections".into()),
            }),
            message: "invalid type".into(),
        };
        assert_eq!(
            keyed.to_string(),
            "server.max_connections (line 3, column 19): invalid type"
        );
        assert_eq!(keyed.key(), Some("server.max_connections"));
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
