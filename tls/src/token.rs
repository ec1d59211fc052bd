//! Bearer tokens for tools that cannot do mutual TLS: a file the server reads at each
//! call (so a new token takes effect at once), refused when others can read it.
use std::path::Path;

/// The token in `path`, if the file is good: not readable by group or others (like
/// ssh's keys), at least 16 characters once whitespace is trimmed.
pub fn read_token(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{}: readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.trim().to_string();
    if token.len() < 16 {
        return Err(format!(
            "{}: a token of at least 16 characters is needed",
            path.display()
        ));
    }
    Ok(token)
}

/// Whether `given` is the token in `path` (compared in time that does not depend on
/// where they differ); Err if the file is not good.
pub fn matches(path: &Path, given: &str) -> Result<bool, String> {
    let token = read_token(path)?;
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    Ok(a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0)
}

/// The token a request carries as `authorization: Bearer TOKEN`.
pub fn bearer<T>(req: &tonic::Request<T>) -> Option<&str> {
    req.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}
