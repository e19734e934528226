//! Registry credentials: given ones, a docker `config.json`, or none.

use std::path::PathBuf;

use docker_credential::{CredentialRetrievalError, DockerCredential};
use oci_client::secrets::RegistryAuth;

use crate::error::{Error, RegistryFault, Result};

/// Where a registry's credentials come from.
#[derive(Clone, Default)]
pub enum Credentials {
    /// None: anonymous access.
    Anonymous,
    /// HTTP basic auth with this user and password.
    Basic {
        /// User name.
        username: String,
        /// Password (or token).
        password: String,
    },
    /// A docker `config.json` (`auths`, `credHelpers`, `credsStore`): the
    /// given file, else `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`. A registry it does not name, or no file at
    /// all, is accessed anonymously.
    #[default]
    DockerConfig,
    /// Like [`Credentials::DockerConfig`], from this file.
    DockerConfigFile(PathBuf),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::DockerConfig => f.write_str("DockerConfig"),
            Credentials::DockerConfigFile(p) => write!(f, "DockerConfigFile({})", p.display()),
        }
    }
}

impl Credentials {
    /// The auth to use for `registry` (`host[:port]`).
    pub(crate) fn resolve(&self, registry: &str) -> Result<RegistryAuth> {
        let path = match self {
            Credentials::Anonymous => return Ok(RegistryAuth::Anonymous),
            Credentials::Basic { username, password } => {
                return Ok(RegistryAuth::Basic(username.clone(), password.clone()));
            }
            Credentials::DockerConfigFile(path) => path.clone(),
            Credentials::DockerConfig => match default_docker_config() {
                Some(path) if path.exists() => path,
                _ => return Ok(RegistryAuth::Anonymous),
            },
        };
        let file = std::fs::File::open(&path)
            .map_err(|e| Error::BadParams(format!("registry config {}: {e}", path.display())))?;
        // Docker Hub's credentials are filed under its v1 index URL.
        let server = match registry {
            "docker.io" | "index.docker.io" => "https://index.docker.io/v1/",
            other => other,
        };
        match docker_credential::get_credential_from_reader(std::io::BufReader::new(file), server) {
            Ok(DockerCredential::UsernamePassword(user, password)) => {
                Ok(RegistryAuth::Basic(user, password))
            }
            // An identity token is a refresh token for the registry's OAuth
            // service, not a bearer token; exchanging it is not supported.
            Ok(DockerCredential::IdentityToken(_)) => Err(Error::registry(
                RegistryFault::Unauthorized,
                format!(
                    "{} holds an identity token for {registry}; hostaction needs a user and \
                     password (`auth` or a credential helper)",
                    path.display()
                ),
            )),
            Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(RegistryAuth::Anonymous),
            Err(e) => Err(Error::registry(
                RegistryFault::Unauthorized,
                format!("credentials for {registry} from {}: {e}", path.display()),
            )),
        }
    }
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn default_docker_config() -> Option<PathBuf> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("DOCKER_CONFIG")
        .or_else(|| env("HOME").map(|h| h.join(".docker")))
        .map(|dir| dir.join("config.json"))
}
