//! Secret values, where they come from, and how to show them without showing them.
//!
//! A [`Credential`] holds its value in a [`SecretString`] and does not derive `Debug`: its
//! `Debug` prints the secret's name, source and [`Fingerprint`] (the first 8 hex digits of the
//! SHA-256 of the value), which is enough to tell two keys apart in a log and useless to an
//! attacker. The only way to the value is [`Credential::expose`], called where an HTTP header
//! is built.
//!
//! Sources, first found wins (`DESIGN.md` §4): the Docker secret file `<dir>/<name>`, the path
//! in `<NAME>_FILE`, then the variable `<NAME>` itself (a development fallback). A placeholder
//! value counts as no value.
//!
//! Text from servers (error bodies, MCP error messages) may quote a secret back; a
//! [`Redactor`] scrubs it before it goes anywhere ([`redact`]).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

pub mod redact;

pub use redact::{Redactor, SecretValues};

/// Larger secret files are refused: an API key or token is well under a kilobyte.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A short, stable, non-reversible tag for a secret value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 4]);

impl Fingerprint {
    /// The fingerprint of a value.
    pub fn of(value: &str) -> Self {
        let digest = Sha256::digest(value.as_bytes());
        Self([digest[0], digest[1], digest[2], digest[3]])
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where a secret value was read from (paths and variable names only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `<secrets.dir>/<name>`.
    SecretFile(PathBuf),
    /// The file named by `<NAME>_FILE`.
    FileVariable {
        /// The variable, e.g. `OPENAI_API_KEY_FILE`.
        variable: String,
        /// The path it named.
        path: PathBuf,
    },
    /// The variable itself, e.g. `OPENAI_API_KEY`.
    Environment(String),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SecretFile(path) => write!(f, "secret file {}", path.display()),
            Self::FileVariable { variable, path } => write!(f, "${variable} ({})", path.display()),
            Self::Environment(variable) => write!(f, "${variable}"),
        }
    }
}

/// A loaded secret. Cheap to clone; the value is shared, never copied into logs.
#[derive(Clone)]
pub struct Credential {
    name: Arc<str>,
    value: SecretString,
    source: Arc<SecretSource>,
    fingerprint: Fingerprint,
}

impl Credential {
    /// Wraps a value read from `source`.
    pub fn new(name: &str, value: SecretString, source: SecretSource) -> Self {
        let fingerprint = Fingerprint::of(value.expose_secret());
        Self { name: name.into(), value, source: Arc::new(source), fingerprint }
    }

    /// The secret's name (`openai_api_key`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the value came from.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// The value's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The value itself: only for building the header that carries it.
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// What is wrong with a secret's source. Never carries the value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The path exists but cannot be used as a secret file.
    #[error("secret {name}: {path} {problem}")]
    BadFile {
        /// Secret name.
        name: String,
        /// The path.
        path: PathBuf,
        /// "is a directory", "is empty", …
        problem: String,
    },
    /// The value holds bytes no HTTP header can carry.
    #[error(
        "secret {name} ({fingerprint}) from {origin} holds characters that cannot go in an HTTP header (a line \
         break or control character inside the value): rewrite it with the key alone on one line"
    )]
    NotHeaderSafe {
        /// Secret name.
        name: String,
        /// Where the value came from (a path or a variable name).
        origin: String,
        /// The value's fingerprint.
        fingerprint: Fingerprint,
    },
    /// `<NAME>_FILE` names a file that does not exist or cannot be read.
    #[error("secret {name}: ${variable} names {path}, which cannot be read: {source}")]
    Unreadable {
        /// Secret name.
        name: String,
        /// The variable.
        variable: String,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// `url` as it may be shown, when it carries a user name or password (which would then be
/// printed wherever the URL is: logs, errors, spans); `None` when it carries neither. Settings
/// refuse such URLs: keys and tokens are secrets of their own.
pub fn shown_without_credentials(url: &url::Url) -> Option<String> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    Some(shown.to_string())
}

/// Whether an HTTP header can carry the secret as `Bearer <value>`, as every request that sends
/// it must: a line break or other control character inside the value cannot.
pub fn header_safe(credential: &Credential) -> Result<(), SecretError> {
    let header = format!("Bearer {}", credential.expose());
    let safe = reqwest::header::HeaderValue::from_str(&header).is_ok();
    drop(secrecy::SecretString::from(header));
    match safe {
        true => Ok(()),
        false => Err(SecretError::NotHeaderSafe {
            name: credential.name().to_owned(),
            origin: credential.source().to_string(),
            fingerprint: credential.fingerprint(),
        }),
    }
}

/// How to find one secret.
#[derive(Debug, Clone)]
pub struct SecretSpec {
    /// Secret name, the file name under the secrets directory (`openai_api_key`).
    pub name: String,
    /// Values that mean "no value".
    pub placeholders: Vec<String>,
}

impl SecretSpec {
    /// A spec without placeholders.
    pub fn new(name: &str) -> Self {
        Self { name: name.to_owned(), placeholders: Vec::new() }
    }

    /// The environment variable of the secret (`OPENAI_API_KEY`).
    pub fn variable(&self) -> String {
        self.name.to_uppercase()
    }
}

/// Reads a secret from its sources; `Ok(None)` when there is none (or only a placeholder).
///
/// `env` looks up environment variables (the process's, or a map in tests).
pub fn load(
    spec: &SecretSpec,
    secrets_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Credential>, SecretError> {
    let variable = spec.variable();
    let found = {
        let docker_path = secrets_dir.join(&spec.name);
        if let Some(value) = read_if_present(&spec.name, &docker_path)? {
            Some((value, SecretSource::SecretFile(docker_path)))
        } else if let Some(path) = env(&format!("{variable}_FILE")).filter(|p| !p.trim().is_empty()) {
            let path = PathBuf::from(path.trim());
            let file_variable = format!("{variable}_FILE");
            match read_if_present(&spec.name, &path)? {
                Some(value) => Some((value, SecretSource::FileVariable { variable: file_variable, path })),
                None => {
                    return Err(SecretError::Unreadable {
                        name: spec.name.clone(),
                        variable: file_variable,
                        path,
                        source: std::io::Error::from(std::io::ErrorKind::NotFound),
                    });
                }
            }
        } else {
            env(&variable)
                .map(|value| SecretString::from(trim_line_end(&value).to_owned()))
                .filter(|value| !value.expose_secret().is_empty())
                .map(|value| (value, SecretSource::Environment(variable.clone())))
        }
    };
    Ok(found
        .filter(|(value, _)| !is_placeholder(spec, value.expose_secret()))
        .map(|(value, source)| Credential::new(&spec.name, value, source)))
}

/// Whether the value of a secret is a placeholder. Only compares; nothing is kept.
pub fn is_placeholder(spec: &SecretSpec, value: &str) -> bool {
    spec.placeholders.iter().any(|p| p == value)
}

fn trim_line_end(value: &str) -> &str {
    value.trim_end_matches(['\n', '\r'])
}

/// Reads a secret file; `Ok(None)` when nothing is at the path. Follows symlinks (Kubernetes
/// mounts secrets as links into `..data/`).
fn read_if_present(name: &str, path: &Path) -> Result<Option<SecretString>, SecretError> {
    let bad = |problem: &str| SecretError::BadFile {
        name: name.to_owned(),
        path: path.to_path_buf(),
        problem: problem.to_owned(),
    };
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A link whose target is gone is a broken mount, not an absent secret.
            return match std::fs::symlink_metadata(path) {
                Ok(link) if link.file_type().is_symlink() => {
                    Err(bad("is a symbolic link to a file that does not exist"))
                }
                _ => Ok(None),
            };
        }
        Err(e) => return Err(bad(&format!("cannot be read ({})", e.kind()))),
    };
    if metadata.is_dir() {
        return Err(bad("is a directory, not a file"));
    }
    // Where a link leads matters: /proc/self/environ is a "file" holding every variable.
    let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let via = if resolved == path { String::new() } else { format!("leads to {}, which ", resolved.display()) };
    if let Some(system) = ["/proc", "/sys", "/dev"].into_iter().find(|root| resolved.starts_with(root)) {
        return Err(bad(&format!(
            "{via}is under {system}: a secret is a regular file holding the key alone (e.g. a Docker secret \
             mounted at /run/secrets/{name})"
        )));
    }
    if !metadata.is_file() {
        return Err(bad(&format!("{via}is not a regular file (a device, FIFO or socket): a secret is a regular file")));
    }
    if metadata.len() > MAX_SECRET_BYTES {
        return Err(bad(&format!("is larger than {MAX_SECRET_BYTES} bytes; is it the right file?")));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_SECRET_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| bad(&format!("cannot be read ({})", e.kind())))?;
    let value = SecretString::from(trim_line_end(&text).to_owned());
    text.zeroize();
    if value.expose_secret().trim().is_empty() {
        return Err(bad("is empty"));
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests;
