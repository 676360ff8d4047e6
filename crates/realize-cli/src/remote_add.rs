//! `realize remote add NAME HOST:PORT`: learn a daemon's key over TLS, have the
//! operator confirm its fingerprint, and save the daemon in the client config.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use realize_net::keys::{PrivateKey, PublicKey};
use rustls::pki_types::ServerName;

use crate::config_file::{self, ConfigFile, Location};

/// How long connecting and the handshake may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What `remote add` asks for.
#[derive(Debug)]
pub struct AddRemote<'a> {
    pub name: &'a str,
    pub address: &'a str,
    /// The fingerprint the daemon's key must have; without it the operator is asked.
    pub fingerprint: Option<&'a str>,
    pub inline: bool,
}

/// Connects, compares or shows the daemon's fingerprint, and writes the remote.
/// Nothing is written unless the key was confirmed.
pub async fn add(config: &Location, request: &AddRemote<'_>) -> anyhow::Result<()> {
    config_file::check_remote_name(request.name).map_err(anyhow::Error::msg)?;
    crate::check_address(request.address)
        .map_err(|why| anyhow::anyhow!("invalid address {:?}: {why}", request.address))?;
    let existing = ConfigFile::load(&Location {
        path: config.path.clone(),
        explicit: false,
    })?;
    if existing.remotes.contains_key(request.name) {
        bail!(
            "{} already has a remote {}; remove it first to replace it",
            config.path.display(),
            request.name
        );
    }
    // Our own key if we have one, so the daemon's log shows whose it is;
    // any key does to learn the daemon's.
    let ours = match &existing.privkey {
        Some(path) => PrivateKey::load(path)?,
        None => PrivateKey::generate()?,
    };
    let key = daemon_key(request.address, &ours).await?;
    let fingerprint = key.fingerprint();
    match request.fingerprint {
        Some(expected) if expected == fingerprint => {}
        Some(expected) => bail!(
            "the daemon at {} has the key {fingerprint}, not {expected}: nothing written \
             (someone may be in between, or the fingerprint was mistyped)",
            request.address
        ),
        None => confirm(request.address, &fingerprint)?,
    }
    config_file::add_remote(
        &config.path,
        request.name,
        request.address,
        &key,
        request.inline,
    )?;
    println!(
        "added remote {} ({}, {fingerprint}) to {}",
        request.name,
        request.address,
        config.path.display()
    );
    if let Some(path) = &existing.privkey {
        println!(
            "the daemon must know our key {} (in {}) as a peer",
            ours.public_key().fingerprint(),
            with_pub_suffix(path).display()
        );
    }
    Ok(())
}

/// The key file `keygen` wrote beside a private key, for the message.
fn with_pub_suffix(key: &Path) -> std::path::PathBuf {
    key.with_extension("pub.pem")
}

/// Asks on the terminal; anything but `yes` declines.
fn confirm(address: &str, fingerprint: &str) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "the daemon at {address} has the key {fingerprint}; not on a terminal, so give \
             --fingerprint {fingerprint} once you have checked it on the daemon's host \
             (realize keygen --show-fingerprint KEY)"
        );
    }
    eprint!(
        "The daemon at {address} has the key {fingerprint}.\n\
         Compare it with `realize keygen --show-fingerprint KEY` on the daemon's host.\n\
         Trust it? (yes/no) "
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("not confirmed: nothing written");
    }
    Ok(())
}

/// The key the daemon at `address` presents, proven by its handshake signature.
async fn daemon_key(address: &str, ours: &PrivateKey) -> anyhow::Result<PublicKey> {
    let tls = realize_net::tls::key_capture_config(ours)?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = ServerName::try_from(realize_net::keys::SERVER_NAME)?;
    let stream = tokio::time::timeout(TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect(address).await?;
        connector.connect(name, tcp).await
    })
    .await
    .with_context(|| format!("no answer from {address} in {}s", TIMEOUT.as_secs()))?
    .with_context(|| format!("cannot connect to {address}"))?;
    realize_net::tls::peer_public_key(stream.get_ref().1)
        .with_context(|| format!("{address} presented no ed25519 key"))
}
