//! The meter's signing key on disk: a PKCS#8 (DER) P-256 private key, readable by its owner
//! only. The agent refuses a key file that others can read: anyone who can read it can sign
//! readings in this meter's name.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use gridshare_core::reading::{MeterKey, PublicKey};
use ring::rand::SystemRandom;

/// Why a key could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// `keygen` would overwrite an existing key.
    #[error("key file {0} already exists; refusing to overwrite a meter's identity (use --force)")]
    Exists(String),
    /// Others can read the file.
    #[error(
        "key file {path} has mode {mode:o}: group or others can read it; run `chmod 600 {path}`"
    )]
    Permissions {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a P-256 PKCS#8 key.
    #[error("key file {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Creates a new key at `path` with mode 0600 and returns its public key.
pub fn generate(path: &Path, force: bool) -> Result<PublicKey, KeyError> {
    let shown = path.display().to_string();
    let io = |source| KeyError::Io {
        path: shown.clone(),
        source,
    };
    if path.exists() && !force {
        return Err(KeyError::Exists(shown));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let rng = SystemRandom::new();
    let pkcs8 = MeterKey::generate_pkcs8(&rng).map_err(|e| KeyError::Invalid {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let key = MeterKey::from_pkcs8(&pkcs8, &rng).map_err(|e| KeyError::Invalid {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    // Write to a temporary file created 0600 and rename, so a crash never leaves a partial key
    // and the key is never readable by others, not even for a moment.
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(&pkcs8).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(key.public_key())
}

/// Loads the key at `path`, refusing a file that group or others can read.
pub fn load(path: &Path) -> Result<MeterKey, KeyError> {
    let shown = path.display().to_string();
    let io = |source| KeyError::Io {
        path: shown.clone(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions { path: shown, mode });
    }
    let pkcs8 = std::fs::read(path).map_err(io)?;
    MeterKey::from_pkcs8(&pkcs8, &SystemRandom::new()).map_err(|e| KeyError::Invalid {
        path: shown,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_0600_and_load_refuses_readable_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/meter.key");
        let public = generate(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap().public_key(), public);
        assert!(matches!(generate(&path, false), Err(KeyError::Exists(_))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(
            matches!(err, KeyError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn garbage_key_file_is_rejected_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meter.key");
        std::fs::write(&path, b"not a key").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, KeyError::Invalid { .. }));
        assert!(err.to_string().contains("meter.key"));
    }
}
